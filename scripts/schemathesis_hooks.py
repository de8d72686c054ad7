"""schemathesis hooks for scripts/fuzz-api (loaded through SCHEMATHESIS_HOOKS).

Drover's one YAML answer, GET /v1/catalog/export, is a Backstage catalog: a
stream of YAML documents, one per component, documented as a string.
schemathesis 4.32 reads any YAML answer as a single document to mine it for
test data, and a stream of several raised in its worker thread: the thread
died, and every operation after it in that phase went untested while the
run still passed (22 of 52 operations ran in the coverage and fuzzing
phases). Read it as what the API documents: its text.
"""

import schemathesis
from schemathesis.core import media_types


@schemathesis.deserializer(*media_types.YAML_MEDIA_TYPES)
def yaml_stream_as_text(_ctx, response):
    return response.content.decode(response.encoding or "utf-8")
