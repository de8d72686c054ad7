-- Settings of the control plane as a whole (issue 16). `shards`: how many
-- shards the fleet is split into (a service's shard is its id's slot
-- modulo this; `drover_model::Slot`), fixed by the first node that starts
-- on the store.
CREATE TABLE cluster_settings (
    name  text NOT NULL PRIMARY KEY,
    value text NOT NULL
);
