//! The machine's memory latency, for the cache-cold rows: one load at a random place in a
//! working set, each load's address coming from the one before (so no two overlap). Two sizes:
//! what `CONNS4` takes for 1M flows, and the least any table of 1M IPv4 flows can take (a
//! 13-byte 5-tuple and a backend: 16 bytes a flow). A lookup in a table that does not fit the
//! CPU's caches costs at least one such load, whatever the program does around it.

use crate::report::Figure;

/// About what `CONNS4` takes for 1M flows (`cargo xtask bench memory`).
pub(super) const CONNS4_1M: usize = 96 << 20;
/// 1M flows of 16 bytes: the smallest a table of them can be.
pub(super) const LEAST_1M: usize = 16 << 20;
const LINE: usize = 64;
const LOADS: usize = 2_000_000;

/// ns per dependent random load over `working_set` bytes, `runs` times.
pub(super) fn random_load(working_set: usize, runs: usize) -> Figure {
    let lines = working_set / LINE;
    let words_per_line = LINE / 8;
    // One cycle through every line in random order (Sattolo's algorithm), the next line's
    // index stored in each line's first word.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..lines).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        order.swap(i, (rng % i as u64) as usize);
    }
    let mut memory = vec![0usize; lines * words_per_line];
    for w in order.windows(2) {
        memory[w[0] * words_per_line] = w[1];
    }
    memory[order[lines - 1] * words_per_line] = order[0];
    let mut at = order[0];
    for _ in 0..LOADS {
        at = memory[at * words_per_line];
    }
    let ns: Vec<f64> = (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..LOADS {
                at = memory[at * words_per_line];
            }
            let ns = start.elapsed().as_nanos() as f64 / LOADS as f64;
            std::hint::black_box(at);
            ns
        })
        .collect();
    Figure::of(&ns, "ns/load")
}
