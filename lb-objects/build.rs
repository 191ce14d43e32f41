//! Builds the eBPF objects (lb-ebpf) with the nightly toolchain for bpfel-unknown-none and
//! places them in OUT_DIR, where src/lib.rs embeds them.

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../lb-ebpf");
    // The XDP program compiles lb-common's types and hash in: rebuild when they change.
    println!("cargo:rerun-if-changed={manifest_dir}/../lb-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF object failed: {e:#}\n\
             Prerequisites: the nightly toolchain with rust-src and bpf-linker; \
             `cargo xtask setup` installs them"
        )
    })
}
