//! Connection faults between us and a real ZooKeeper, injected by a TCP proxy on loopback:
//! - the connection breaks after our create request reached the server but before its answer
//!   reached us: the guid finds our node again (no orphan contender, no double entry);
//! - the connection breaks while we hold: we reconnect within the session timeout and keep
//!   the lock (same node, same token).

mod zk_common;

use lockfn::{Lock, Target};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zk_common::*;

struct Proxy {
    port: u16,
    /// Cut the connection right after forwarding the next create request (op 1 or 15).
    cut_on_create: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Drop new connections at once (the ensemble "vanished").
    refuse: Arc<AtomicBool>,
}

fn read_exact_or_none(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    s.read_exact(buf).is_ok()
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            port,
            cut_on_create: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicUsize::new(0)),
            accepted: Arc::new(AtomicUsize::new(0)),
            live: Arc::new(Mutex::new(Vec::new())),
            refuse: Arc::new(AtomicBool::new(false)),
        };
        let refuse = p.refuse.clone();
        let (cut, cuts, accepted, live) = (
            p.cut_on_create.clone(),
            p.cuts.clone(),
            p.accepted.clone(),
            p.live.clone(),
        );
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(client) = c else { continue };
                if refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                {
                    let mut v = live.lock().unwrap();
                    v.push(client.try_clone().unwrap());
                    v.push(server.try_clone().unwrap());
                }
                // server -> client: raw copy.
                let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s2.read(&mut buf) {
                        if n == 0 || c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(Shutdown::Both);
                });
                // client -> server: frame by frame, watching for creates.
                let (mut c3, mut s3) = (client, server);
                let (cut, cuts) = (cut.clone(), cuts.clone());
                std::thread::spawn(move || {
                    let mut first = true;
                    loop {
                        let mut len = [0u8; 4];
                        if !read_exact_or_none(&mut c3, &mut len) {
                            break;
                        }
                        let n = i32::from_be_bytes(len).max(0) as usize;
                        let mut body = vec![0u8; n];
                        if !read_exact_or_none(&mut c3, &mut body) {
                            break;
                        }
                        if s3.write_all(&len).is_err() || s3.write_all(&body).is_err() {
                            break;
                        }
                        let op = if !first && n >= 8 {
                            i32::from_be_bytes([body[4], body[5], body[6], body[7]])
                        } else {
                            0
                        };
                        first = false;
                        if (op == 1 || op == 15) && cut.swap(false, Ordering::SeqCst) {
                            // Let the server apply it, then break the connection before the
                            // answer can travel back.
                            std::thread::sleep(Duration::from_millis(200));
                            let _ = c3.shutdown(Shutdown::Both);
                            let _ = s3.shutdown(Shutdown::Both);
                            cuts.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                    let _ = s3.shutdown(Shutdown::Both);
                });
            }
        });
        p
    }

    fn cut_all(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn via(proxy: &Proxy, name: &str) -> Target {
    Target::parse(&format!("zk://127.0.0.1:{}/lockfn-test/{name}", proxy.port)).unwrap()
}

#[test]
fn connection_loss_during_create_finds_our_node_by_guid() {
    let Some(h) = zkhosts() else { return };
    let upstream = h.split(',').next().unwrap().to_string();
    let proxy = Proxy::start(upstream);
    let name = unique("createloss");
    let direct = target(&h, &name);
    // Make the lock node exist first, so the cut hits the contender's create.
    Lock::acquire(&direct, &opts(None))
        .unwrap()
        .release()
        .unwrap();
    let t = via(&proxy, &name);
    proxy.cut_on_create.store(true, Ordering::SeqCst);
    let mut o = opts(Some(Duration::from_secs(20)));
    o.ttl = Some(Duration::from_secs(10));
    let l = Lock::acquire(&t, &o).unwrap();
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the create was not cut"
    );
    assert!(
        proxy.accepted.load(Ordering::SeqCst) >= 2,
        "no reconnection"
    );
    let st = lockfn::status(&direct).unwrap();
    let nodes = st.details["nodes"].as_array().unwrap().len();
    assert_eq!(nodes, 1, "{st:?}");
    assert_eq!(
        st.details["waiting"], 0,
        "a second contender of ours: {st:?}"
    );
    assert_eq!(st.holders[0].record.pid, std::process::id() as i32);
    assert_eq!(st.holders[0].record.token, l.token());
    l.release().unwrap();
    assert!(!lockfn::status(&direct).unwrap().held);
}

#[test]
fn suspended_connection_that_recovers_keeps_the_lock() {
    let Some(h) = zkhosts() else { return };
    let upstream = h.split(',').next().unwrap().to_string();
    let proxy = Proxy::start(upstream);
    let name = unique("suspend");
    let t = via(&proxy, &name);
    let mut o = opts(None);
    o.ttl = Some(Duration::from_secs(6));
    let l = Lock::acquire(&t, &o).unwrap();
    let before = proxy.accepted.load(Ordering::SeqCst);
    proxy.cut_all();
    // update waits for the reconnection (same session) and confirms the node is still ours.
    l.update().unwrap();
    assert!(
        proxy.accepted.load(Ordering::SeqCst) > before,
        "no reconnection happened"
    );
    l.check().unwrap();
    let st = lockfn::status(&target(&h, &name)).unwrap();
    assert_eq!(st.holders.len(), 1);
    assert_eq!(st.holders[0].record.token, l.token());
    l.release().unwrap();
}

#[test]
fn waiting_forever_ends_unavailable_when_the_ensemble_vanishes() {
    let Some(h) = zkhosts() else { return };
    let upstream = h.split(',').next().unwrap().to_string();
    let proxy = Proxy::start(upstream);
    let name = unique("vanish");
    let direct = target(&h, &name);
    let holder = Lock::acquire(&direct, &opts(None)).unwrap();
    let t = via(&proxy, &name);
    let waiter = std::thread::spawn(move || {
        let mut o = opts(None); // forever
        o.ttl = Some(Duration::from_secs(2));
        let r = Lock::acquire(&t, &o);
        r.map(|_| ())
    });
    let s = std::time::Instant::now();
    while lockfn::status(&direct).unwrap().details["waiting"] != 1 {
        assert!(s.elapsed() < Duration::from_secs(10), "waiter never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.refuse.store(true, Ordering::SeqCst);
    proxy.cut_all();
    let cut = std::time::Instant::now();
    let e = waiter.join().unwrap().unwrap_err();
    let took = cut.elapsed();
    eprintln!(
        "zk: waiter cut off from the ensemble gave up after {:.2} s: {e}",
        took.as_secs_f64()
    );
    assert_eq!(e.kind(), lockfn::ErrorKind::Unavailable, "{e}");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{}", proxy.port)),
        "{e}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Its node goes with its session; the holder is unaffected.
    holder.update().unwrap();
    let s = std::time::Instant::now();
    while lockfn::status(&direct).unwrap().details["waiting"] != 0 {
        assert!(
            s.elapsed() < Duration::from_secs(15),
            "the cut-off waiter's node stayed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.release().unwrap();
}
