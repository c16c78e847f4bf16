//! `sqlx::migrate!` embeds the migrations when the crate compiles, and cargo
//! does not see a new migration file on its own: without this, a build
//! after adding one can keep the binary that lacks it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
