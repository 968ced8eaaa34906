//! The `skiff-agent` binary: the node agent alone (see the crate's
//! library).

fn main() {
    skiff_cmd::skiff_agent();
}
