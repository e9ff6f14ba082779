//! Link settings of the `picoflow` binary.

fn main() {
    // With isahc in the binary (the http and docker features), OpenSSL's load-time
    // initialisation is deferred to the first TLS or SSH connection: every call of
    // OPENSSL_init_ssl goes through src/tls.rs.
    if ["CARGO_FEATURE_HTTP", "CARGO_FEATURE_DOCKER"]
        .iter()
        .any(|f| std::env::var_os(f).is_some())
    {
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=OPENSSL_init_ssl");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
