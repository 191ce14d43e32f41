//! The health checks' pure parts: hysteresis and status lines.

use super::*;

#[test]
fn first_result_decides_then_rise_and_fall_count() {
    let mut h = Hysteresis::default();
    assert_eq!(h.record(true, 3, 3), Some(Health::Up));
    assert_eq!(h.record(false, 3, 3), None);
    assert_eq!(h.record(false, 3, 3), None);
    // A success in between restarts the count.
    assert_eq!(h.record(true, 3, 3), None);
    assert_eq!(h.record(false, 3, 3), None);
    assert_eq!(h.record(false, 3, 3), None);
    assert_eq!(h.record(false, 3, 3), Some(Health::Down));
    assert_eq!(h.record(true, 2, 3), None);
    assert_eq!(h.record(true, 2, 3), Some(Health::Up));
    let mut h = Hysteresis::default();
    assert_eq!(h.record(false, 3, 3), Some(Health::Down));
}

#[test]
fn status_lines() {
    assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\nServer: x").unwrap(), 200);
    assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\n").unwrap(), 503);
    for bad in [
        &b"SSH-2.0-x\r\n"[..],
        b"HTTP/1.1 abc\r\n",
        b"HTTP/1.1 99 x\r\n",
        b"",
    ] {
        assert!(parse_status(bad).is_err(), "{bad:?}");
    }
}
