//! The Connectors controller (reconciliation, probes, unified API) is being built; see the README.
fn main() {
    eprintln!("connectors-controller: not implemented yet");
    std::process::exit(2);
}
