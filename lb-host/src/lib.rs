//! Host helpers that both binaries need, the agent (`lb`) and the backends' `lb decap`, kept
//! below both so neither copies them: mounting and checking bpffs, interface indexes, and the
//! text tables operators read.

mod bpffs;
mod iface;
pub mod table;

pub use bpffs::ensure_bpffs;
pub use iface::ifindex;
