//! `lb-echo`: the lab's long-lived-connection service. Listens on [::]:PORT (IPv4 too), greets
//! each connection with `hello from NAME\n`, then echoes every byte back. Runs until killed.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(name), Some(port)) = (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok()))
    else {
        eprintln!("usage: lb-echo NAME PORT");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .unwrap_or_else(|e| {
            eprintln!("lb-echo: binding port {port}: {e}");
            std::process::exit(1);
        });
    let greeting = format!("hello from {name}\n");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let greeting = greeting.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            if conn.write_all(greeting.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 16384];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}
