//! Securing the gRPC port, over the real binary: the bearer token (`--auth-token-file`) guards the
//! API and reflection but not health and never reaches the log; TLS (`--tls-cert`/`--tls-key`)
//! refuses plain-text clients; mutual TLS (`--tls-client-ca`) refuses clients without a certificate
//! from that CA; bad files stop startup with a message naming the flag.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    ServerReflectionRequest,
};
use voice_e2e_tests::*;
use voice_proto::v1::voice_sidecar_client::VoiceSidecarClient;
use voice_realtime_sim::{ScriptStep, SimConfig};

fn sim_config() -> SimConfig {
    SimConfig {
        script: vec![ScriptStep::say("Hello.")],
        ..Default::default()
    }
}

/// A fresh temporary file holding `content`.
fn temp_file(name: &str, content: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("voice-e2e-{name}-{}", free_port()));
    std::fs::write(&p, content).unwrap();
    p
}

async fn health(ch: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "voice.v1.VoiceSidecar".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn list_services(ch: Channel, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut req = tonic::Request::new(tokio_stream::iter(vec![ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    }]));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let mut resp = ServerReflectionClient::new(ch)
        .server_reflection_info(req)
        .await?
        .into_inner();
    resp.message().await?.expect("a reflection answer");
    Ok(())
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the sidecar")
}

#[tokio::test]
async fn bearer_token_guards_the_api_and_reflection_but_not_health_and_stays_out_of_the_log() {
    let sim = start_sim(sim_config()).await;
    let token = format!("e2e-Tok3n-{}-do-not-log", free_port());
    let token_file = temp_file("auth-token", &format!("{token}\n"));
    let (sidecar, log) = start_sidecar_logged(
        &sim.base_url(),
        &["--auth-token-file", token_file.to_str().unwrap()],
        "trace",
    )
    .await;
    let ch = plain_channel(sidecar.addr).await;
    let c = VoiceSidecarClient::new(ch.clone());

    let refused = |r: Result<HostSession, tonic::Status>, what: &str| {
        let Err(st) = r else {
            panic!("{what}: session admitted")
        };
        assert_eq!(st.code(), Code::Unauthenticated, "{what}: {st:?}");
        assert!(!st.message().contains(&token), "{what}: {st:?}");
    };
    refused(
        HostSession::open_with(c.clone(), start_16k_quiet_guard()).await,
        "no token",
    );
    let wrong = format!("Bearer {}", token.replace("Tok3n", "TOK3N"));
    refused(
        HostSession::open_with_metadata(
            c.clone(),
            start_16k_quiet_guard(),
            &[("authorization", &wrong)],
        )
        .await,
        "wrong token of the same length",
    );
    refused(
        HostSession::open_with_metadata(
            c.clone(),
            start_16k_quiet_guard(),
            &[("authorization", "Bearer x")],
        )
        .await,
        "short token",
    );
    refused(
        HostSession::open_with_metadata(
            c.clone(),
            start_16k_quiet_guard(),
            &[("authorization", &token)],
        )
        .await,
        "token without the Bearer scheme",
    );

    let right = format!("Bearer {token}");
    let mut host = HostSession::open_with_metadata(
        c.clone(),
        start_16k_quiet_guard(),
        &[("authorization", &right)],
    )
    .await
    .expect("the right token is admitted");
    host.until_started(Duration::from_secs(10)).await;
    host.send_text("hi").await;
    host.until_response_done(Duration::from_secs(10)).await;
    host.end().await;
    host.until_ended(Duration::from_secs(10)).await;

    // Health answers without the token (probes); reflection needs it.
    assert_eq!(
        health(ch.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    let st = list_services(ch.clone(), None).await.unwrap_err();
    assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    list_services(ch.clone(), Some(&token))
        .await
        .expect("reflection with the token");

    drop(ch);
    drop(sidecar);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("TRACE"),
        "the log is not at trace level: {} bytes",
        text.len()
    );
    assert!(
        !text.contains(&token),
        "the token appears in the trace log ({})",
        log.display()
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&token_file);
}

/// A CA, a server certificate for `localhost`/127.0.0.1 and a client certificate it issued, PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "voice e2e");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let issuer = ca("voice e2e CA");
    let (server_cert, server_key) = leaf(
        &issuer,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(&issuer, &["host-app"], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: issuer.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a health check over `ch` (if it connected at all) succeeded.
async fn served(ch: Result<Channel, tonic::transport::Error>) -> bool {
    match ch {
        Ok(ch) => health(ch).await.is_ok(),
        Err(_) => false,
    }
}

async fn plain_served(addr: SocketAddr) -> bool {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    served(ch).await
}

async fn session_starts(ch: Channel) {
    let mut host = HostSession::open_with(VoiceSidecarClient::new(ch), start_16k_quiet_guard())
        .await
        .expect("session admitted over TLS");
    host.until_started(Duration::from_secs(10)).await;
    host.end().await;
    host.until_ended(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn tls_refuses_plain_text_and_serves_tls_clients() {
    let pki = pki();
    let sim = start_sim(sim_config()).await;
    let cert = temp_file("tls-cert", &pki.server_cert);
    let key = temp_file("tls-key", &pki.server_key);
    let sidecar = start_sidecar(
        &sim.base_url(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        !plain_served(sidecar.addr).await,
        "a plain-text client was served"
    );
    let ch = tls_channel(sidecar.addr, &pki.ca, None)
        .await
        .expect("TLS client connects");
    assert_eq!(
        health(ch.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    session_starts(ch).await;
    // A client that trusts another CA does not accept the server.
    let other = ca("some other CA");
    assert!(!served(tls_channel(sidecar.addr, &other.pem(), None).await).await);
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = pki();
    let sim = start_sim(sim_config()).await;
    let cert = temp_file("mtls-cert", &pki.server_cert);
    let key = temp_file("mtls-key", &pki.server_key);
    let client_ca = temp_file("mtls-ca", &pki.ca);
    let sidecar = start_sidecar(
        &sim.base_url(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!plain_served(sidecar.addr).await, "plain text was served");
    assert!(
        !served(tls_channel(sidecar.addr, &pki.ca, None).await).await,
        "a TLS client without a certificate was served"
    );
    // A certificate from another CA is refused too.
    let rogue = ca("rogue CA");
    let (rogue_cert, rogue_key) = leaf(&rogue, &["host-app"], ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        !served(tls_channel(sidecar.addr, &pki.ca, Some((&rogue_cert, &rogue_key))).await).await,
        "a client certificate from another CA was accepted"
    );
    let ch = tls_channel(
        sidecar.addr,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
    )
    .await
    .expect("mTLS client connects");
    assert_eq!(
        health(ch.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    session_starts(ch).await;
}

/// Runs the sidecar with `args` and expects it to exit non-zero within 20 s; returns its stderr.
fn startup_error(args: &[&str]) -> String {
    let mut child = Command::new(binary("voice-sidecar"))
        .args(["--backend", "sim", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "off"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(!st.success(), "{args:?}: exited successfully");
            break;
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{args:?}: still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn bad_token_and_tls_files_stop_startup_with_the_flag_named() {
    let pki = pki();
    let cert = temp_file("bad-cert", &pki.server_cert);
    let key = temp_file("bad-key", &pki.server_key);
    let empty = temp_file("bad-empty", "\n");
    let garbage = temp_file("bad-garbage", "not a pem file\n");
    let (cert, key, empty, garbage) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        empty.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    let cases: &[(&[&str], &str)] = &[
        (&["--auth-token-file", empty], "is empty"),
        (
            &["--auth-token-file", "/nonexistent/token"],
            "reading --auth-token-file",
        ),
        (&["--tls-cert", cert], "--tls-cert needs --tls-key"),
        (
            &["--tls-cert", "/nonexistent/c", "--tls-key", key],
            "reading --tls-cert",
        ),
        (&["--tls-cert", garbage, "--tls-key", key], "--tls-cert"),
        (&["--tls-cert", cert, "--tls-key", garbage], "--tls-key"),
        (&["--tls-cert", cert, "--tls-key", cert], "--tls-key"),
        (
            &["--tls-client-ca", cert],
            "--tls-client-ca needs --tls-cert",
        ),
        (
            &[
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                "--tls-client-ca",
                garbage,
            ],
            "--tls-client-ca",
        ),
    ];
    for (args, want) in cases {
        let err = startup_error(args);
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
}
