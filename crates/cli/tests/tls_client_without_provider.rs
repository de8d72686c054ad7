//! Review item (a) of issue 10: reqwest is built with `rustls-no-provider`,
//! so a client built the plain way before someone installed a process-wide
//! rustls provider panics. Drover's clients carry their own ring-based
//! configuration (`drover_agent::tls::client_builder`): this test process
//! never installs a provider, builds its clients, and talks HTTPS to a real
//! `drover serve --tls-self-signed` (its own process), trusting only the
//! certificate it generated.

mod common;

use common::{free_port, Serve};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_built_without_any_installed_provider_talks_tls_to_a_self_signed_serve() {
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "nothing installed a provider yet");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let port = free_port();
    let serve = Serve::start(&cwd, port, &["--no-local", "--data-dir", "d", "--tls-self-signed"]);
    let cert = cwd.join("d").join(drover_agent::tls::DATA_DIR_CERT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cert.is_file() {
        assert!(Instant::now() < deadline, "no certificate generated: {}", serve.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both ways of making a client: trusting the server's CA, and the
    // system's roots (which do not hold it).
    let trusting =
        drover_agent::tls::client_builder(Some(&cert)).unwrap().timeout(Duration::from_secs(5)).build().unwrap();
    let system = drover_agent::tls::client();
    let url = format!("https://localhost:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match trusting.get(&url).send().await {
            // 503 while the server is still starting: over TLS all the same.
            Ok(r) if r.status().as_u16() == 200 || Instant::now() >= deadline => break r.status().as_u16(),
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => {
                assert!(drover_agent::tls::certificate_error(&e).is_none(), "the CA is not trusted: {e:?}");
                assert!(Instant::now() < deadline, "never answered over TLS: {e:?}\n{}", serve.log_tail());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(status, 200, "GET /healthz over TLS");
    // The certificate is verified: the system's roots refuse it.
    let refused = system.get(&url).send().await.expect_err("a self-signed certificate outside the system's roots");
    assert!(drover_agent::tls::certificate_error(&refused).is_some(), "refused for its certificate: {refused:?}");
    assert!(rustls::crypto::CryptoProvider::get_default().is_none(), "still nothing installed");
}
