//! Links the bare-metal kernel at `layout::KERNEL_BASE` (host builds unaffected).
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        // 0x20_0000 = vellum_boot::layout::KERNEL_BASE; `image` checks the
        // linked segments against the layout before building an image.
        println!("cargo:rustc-link-arg-bins=--image-base=0x200000");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
        println!("cargo:rustc-link-arg-bins=--build-id=none");
    }
}
