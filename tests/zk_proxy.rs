//! Connection faults between us and a real ZooKeeper, injected by a TCP proxy on loopback:
//! - the connection breaks after our create request reached the server but before its answer
//!   reached us: the guid finds our node again (no orphan contender, no double entry);
//! - the connection breaks while we hold: we reconnect within the session timeout and keep
//!   the lock (same node, same token).

mod common;
mod zk_common;

use common::{await_until, unique};
use lockfn::{Lock, Target};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zk_common::*;

struct Proxy {
    port: u16,
    /// Cut the connection when the server answers the next create request (op 1 or 15): the
    /// server has applied it, and the answer never reaches the client.
    cut_on_create: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Drop new connections at once (the ensemble "vanished").
    refuse: Arc<AtomicBool>,
}

/// No create marked for cutting on a connection.
const NO_CUT: i64 = i64::MIN;

/// One length-prefixed ZooKeeper frame (the length bytes and the body), None at EOF or error.
fn read_frame(s: &mut TcpStream) -> Option<([u8; 4], Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len).max(0) as usize;
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).ok()?;
    Some((len, body))
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
                // The xid of the create whose answer is to be swallowed (NO_CUT: none).
                let cut_xid = Arc::new(AtomicI64::new(NO_CUT));
                // server -> client: frame by frame. The answer to the marked create proves the
                // server applied it: the connection is broken instead of forwarding it.
                let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                let (xid2, cuts2) = (cut_xid.clone(), cuts.clone());
                std::thread::spawn(move || {
                    let mut first = true;
                    while let Some((len, body)) = read_frame(&mut s2) {
                        // Replies (after the connect response) start with their request's xid.
                        let xid = match (first, body.get(..4)) {
                            (false, Some(x)) => i32::from_be_bytes([x[0], x[1], x[2], x[3]]),
                            _ => 0,
                        };
                        first = false;
                        let want = xid2.load(Ordering::SeqCst);
                        if want != NO_CUT && i64::from(xid) == want {
                            let _ = s2.shutdown(Shutdown::Both);
                            cuts2.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if c2.write_all(&len).is_err() || c2.write_all(&body).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(Shutdown::Both);
                });
                // client -> server: frame by frame, watching for creates.
                let (mut c3, mut s3) = (client, server);
                let cut = cut.clone();
                std::thread::spawn(move || {
                    let mut first = true;
                    while let Some((len, body)) = read_frame(&mut c3) {
                        // Requests (after the connect request) start with xid, then op.
                        let (xid, op) = match (first, body.get(..8)) {
                            (false, Some(h)) => (
                                i32::from_be_bytes([h[0], h[1], h[2], h[3]]),
                                i32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                            ),
                            _ => (0, 0),
                        };
                        first = false;
                        if (op == 1 || op == 15) && cut.swap(false, Ordering::SeqCst) {
                            // Marked before it is forwarded, so its answer cannot slip through.
                            cut_xid.store(i64::from(xid), Ordering::SeqCst);
                        }
                        if s3.write_all(&len).is_err() || s3.write_all(&body).is_err() {
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
    await_waiting(&direct, 1, Duration::from_secs(10));
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
    assert!(
        await_until(Duration::from_secs(15), || waiting(&direct) == 0),
        "the cut-off waiter's node stayed"
    );
    holder.release().unwrap();
}
