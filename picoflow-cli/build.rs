//! Link settings of the `picoflow` binary.

fn main() {
    // With the http feature, OpenSSL's load-time initialisation is deferred to the first TLS
    // or SSH connection: every call of OPENSSL_init_ssl goes through src/tls.rs.
    if std::env::var_os("CARGO_FEATURE_HTTP").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=OPENSSL_init_ssl");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
