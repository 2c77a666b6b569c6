// `embed_migrations!` reads migrations/ at compile time; make a new or changed migration
// file trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
