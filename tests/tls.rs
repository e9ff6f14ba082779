//! `type: http` over TLS through the `picoflow` binary, against `openssl s_server` on
//! 127.0.0.1 with a certificate made for the test by a test CA (`common::Certificates`): the
//! server's certificate is verified against the trust store named by `SSL_CERT_FILE`, a
//! certificate the store does not vouch for fails the task, and TLS works although the binary
//! leaves OpenSSL uninitialised until the first TLS connection (see `picoflow-cli/src/tls.rs`).

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, picoflow, run, stdout, wait_for, Certificates, TempDir};

/// `openssl s_server -www` on 127.0.0.1: answers `GET /` with `200 ok` over TLS.
struct TlsServer {
    port: u16,
    child: Child,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let certs = Certificates::new(dir, "server");
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&certs.cert)
            .arg("-key")
            .arg(&certs.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        wait_for(
            Duration::from_secs(10),
            "openssl s_server to listen",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        TlsServer { port, child }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workflow(dir: &TempDir, port: u16) -> std::path::PathBuf {
    dir.write(
        "tls.yaml",
        &format!(
            "name: tls\ntasks:\n  - name: fetch\n    type: http\n    retry: 0\n    config:\n      \
             url: https://127.0.0.1:{port}/\n      method: GET\n"
        ),
    )
}

#[test]
fn https_verifies_the_server_against_the_trust_store() {
    let out = run(picoflow(Path::new(".")).arg("--version"));
    assert!(
        stdout(&out).contains("+http"),
        "this test needs the http feature (run the suite with default features)"
    );
    let dir = TempDir::new("tls");
    let server = TlsServer::start(dir.path());
    let wf = workflow(&dir, server.port);

    // Trusted: the store is the CA that signed the server's certificate.
    let out = run(picoflow(dir.path())
        .env("SSL_CERT_FILE", dir.path().join("server-ca.pem"))
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let shown = run(picoflow(dir.path()).args(["logs", "tls", "--task", "fetch"]));
    assert!(stdout(&shown).contains("s_server"), "{}", stdout(&shown));

    // Not trusted: the system's store knows nothing of a certificate made a moment ago.
    let out = run(picoflow(dir.path())
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .arg("run")
        .arg(&wf));
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out).to_lowercase();
    assert!(text.contains("certificate"), "{text}");
}
