//! The `skiff` binary (see the crate's library).

fn main() {
    skiff_cmd::skiff();
}
