//! The connection thread of a ZooKeeper session: connect to a server of the ensemble (the
//! session handshake, re-using the session id on a reconnect, digest auth), read frames
//! (bounded in size), deliver replies and watch events, ping, and reconnect until the session
//! expires.

use super::client::{
    fire_all, fire_path, lock, Shared, St, State, ZkError, C_CONNS, C_EVENTS, C_SESSIONS,
};
use super::proto::{self, R, W};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read and buffer frames from a stream whose reads may time out mid-frame.
struct FrameReader {
    buf: Vec<u8>,
}

enum Got {
    Frame(Vec<u8>),
    Idle,
}

/// Largest frame accepted from a server, checked on its length prefix before anything is
/// allocated for it. ZooKeeper's own clients stop at jute.maxbuffer (1 MiB by default).
/// cbindgen:ignore
pub const MAX_FRAME: usize = 4 << 20;

impl FrameReader {
    /// A complete frame in the buffer, if any (an error for a length out of bounds).
    fn take(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if n < 0 || n as usize > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the server sent a frame of {n} bytes (the limit is {} MiB): not ZooKeeper, \
                     or a broken server",
                    MAX_FRAME >> 20
                ),
            ));
        }
        let n = n as usize;
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let frame = self.buf[4..4 + n].to_vec();
        self.buf.drain(..4 + n);
        Ok(Some(frame))
    }

    /// The next frame, or `Idle` after one read that did not complete one (so a caller
    /// checks its deadline and pings even while a server trickles a frame byte by byte).
    fn next(&mut self, s: &mut TcpStream) -> io::Result<Got> {
        if let Some(f) = self.take()? {
            return Ok(Got::Frame(f));
        }
        let mut tmp = [0u8; 16384];
        loop {
            match s.read(&mut tmp) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ))
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(match self.take()? {
                        Some(f) => Got::Frame(f),
                        None => Got::Idle,
                    });
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(Got::Idle)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn frame(body: &W) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.0.len() + 4);
    v.extend_from_slice(&(body.0.len() as i32).to_be_bytes());
    v.extend_from_slice(&body.0);
    v
}

/// The reader thread: connect, serve, reconnect, until the session expires.
pub(super) fn run(sh: Arc<Shared>) {
    let n = sh.cfg.hosts.len().max(1);
    let mut idx = (std::process::id() as usize) % n;
    let mut failures_in_row = 0usize;
    loop {
        if lock(&sh.st).state == State::Expired {
            return;
        }
        let host = sh.cfg.hosts.get(idx % n).cloned().unwrap_or_default();
        idx += 1;
        match connect(&sh, &host) {
            Ok((stream, reader)) => {
                failures_in_row = 0;
                let since = Instant::now();
                let why = serve(&sh, stream, reader);
                disconnected(&sh, &format!("connection to {host} lost: {why}"));
                if since.elapsed() < Duration::from_secs(1) {
                    // A server that drops us right after the handshake: no busy reconnect loop.
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(ConnectErr::Expired) => {
                let mut st = lock(&sh.st);
                st.state = State::Expired;
                st.last_error = "session expired".into();
                wake_everyone(&mut st);
                sh.cv.notify_all();
                return;
            }
            Err(ConnectErr::Io(e)) => {
                failures_in_row += 1;
                let mut st = lock(&sh.st);
                st.last_error = format!("{host}: {e}");
                drop(st);
                if failures_in_row % n == 0 {
                    // Every server failed once: back off a little (bounded), then go round again.
                    let k = (failures_in_row / n).min(5) as u64;
                    std::thread::sleep(Duration::from_millis(50 * k));
                }
            }
        }
    }
}

enum ConnectErr {
    Io(String),
    Expired,
}

fn io_err(e: io::Error) -> ConnectErr {
    ConnectErr::Io(e.to_string())
}

fn connect(sh: &Shared, host: &str) -> Result<(TcpStream, FrameReader), ConnectErr> {
    let (session_id, passwd, last_zxid) = {
        let st = lock(&sh.st);
        (st.session_id, st.passwd.clone(), st.last_zxid)
    };
    let timeout = sh.cfg.timeout;
    let per_try = (timeout / 2).clamp(Duration::from_millis(500), Duration::from_secs(3));
    let addrs: Vec<_> = host
        .to_socket_addrs()
        .map_err(|e| ConnectErr::Io(format!("cannot resolve: {e}")))?
        .collect();
    let mut last = ConnectErr::Io("no address".into());
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, per_try) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = io_err(e),
        }
    }
    let mut s = stream.ok_or(last)?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(per_try)).map_err(io_err)?;
    s.set_write_timeout(Some(per_try)).map_err(io_err)?;
    let mut req = W::new();
    req.i32(0)
        .i64(last_zxid)
        .i32(timeout.as_millis().min(i32::MAX as u128) as i32)
        .i64(session_id)
        .buf(&passwd)
        .bool(false);
    s.write_all(&frame(&req)).map_err(io_err)?;
    let mut reader = FrameReader { buf: Vec::new() };
    let deadline = Instant::now() + per_try;
    let body = loop {
        match reader.next(&mut s).map_err(io_err)? {
            Got::Frame(f) => break f,
            Got::Idle if Instant::now() >= deadline => {
                return Err(ConnectErr::Io("no answer to the session handshake".into()))
            }
            Got::Idle => {}
        }
    };
    let (neg, sid, pw) = parse_handshake(&body)
        .map_err(|_| ConnectErr::Io("malformed session handshake answer".into()))?;
    if neg <= 0 {
        return Err(if session_id != 0 {
            ConnectErr::Expired
        } else {
            ConnectErr::Io("the server refused the session".into())
        });
    }
    // Never more than we asked for: a server negotiating a longer session (up to 24 days)
    // must not stretch our waits, pings or loss detection.
    let negotiated = Duration::from_millis(neg as u64).min(timeout);
    if let Some(auth) = &sh.cfg.auth {
        let mut a = W::new();
        a.i32(proto::XID_AUTH)
            .i32(proto::OP_AUTH)
            .i32(0)
            .str("digest")
            .buf(auth.as_bytes());
        s.write_all(&frame(&a)).map_err(io_err)?;
    }
    let ping = (negotiated / 3).max(Duration::from_millis(50));
    s.set_read_timeout(Some(ping.min(Duration::from_millis(500))))
        .map_err(io_err)?;
    s.set_write_timeout(Some((negotiated / 2).max(Duration::from_millis(100))))
        .map_err(io_err)?;
    let writer = s.try_clone().map_err(io_err)?;
    let mut st = lock(&sh.st);
    if st.session_id != sid {
        C_SESSIONS.fetch_add(1, Ordering::Relaxed);
    }
    C_CONNS.fetch_add(1, Ordering::Relaxed);
    st.session_id = sid;
    st.passwd = pw;
    st.negotiated = negotiated;
    st.writer = Some(writer);
    st.state = State::Connected;
    st.gen += 1;
    st.last_heard = Instant::now();
    st.last_sent = Instant::now();
    wake_everyone(&mut st);
    sh.cv.notify_all();
    Ok((s, reader))
}

/// The server's answer to the session handshake: negotiated timeout (ms; 0 or less when it
/// refused the session), session id, session password.
fn parse_handshake(body: &[u8]) -> Result<(i32, i64, Vec<u8>), proto::Short> {
    let mut r = R::new(body);
    let _proto_version = r.i32()?;
    let timeout = r.i32()?;
    let session_id = r.i64()?;
    let passwd = r.buf()?;
    Ok((timeout, session_id, passwd))
}

fn wake_everyone(st: &mut St) {
    fire_all(&mut st.data_watches);
    fire_all(&mut st.child_watches);
    st.state_watchers.retain(|w| match w.upgrade() {
        Some(n) => {
            n.fire();
            true
        }
        None => false,
    });
}

fn disconnected(sh: &Shared, why: &str) {
    let mut st = lock(&sh.st);
    if let Some(w) = st.writer.take() {
        let _ = w.shutdown(Shutdown::Both);
    }
    if st.state == State::Connected {
        st.state = State::Connecting;
    }
    st.last_error = why.to_string();
    for (_, tx) in st.pending.drain() {
        let _ = tx.send(Err(ZkError::ConnectionLoss));
    }
    wake_everyone(&mut st);
    sh.cv.notify_all();
}

/// Serve one connection until it breaks; returns why.
fn serve(sh: &Shared, mut s: TcpStream, mut reader: FrameReader) -> String {
    loop {
        let got = match reader.next(&mut s) {
            Ok(g) => g,
            Err(e) => return e.to_string(),
        };
        let mut st = lock(&sh.st);
        let negotiated = st.negotiated;
        match got {
            Got::Idle => {}
            Got::Frame(f) => {
                st.last_heard = Instant::now();
                let mut r = R::new(&f);
                let (Ok(xid), Ok(zxid), Ok(err)) = (r.i32(), r.i64(), r.i32()) else {
                    return "malformed reply".into();
                };
                if zxid > 0 {
                    st.last_zxid = zxid;
                }
                match xid {
                    proto::XID_NOTIFICATION => {
                        let (Ok(ty), Ok(_state), Ok(path)) = (r.i32(), r.i32(), r.string()) else {
                            return "malformed watch event".into();
                        };
                        C_EVENTS.fetch_add(1, Ordering::Relaxed);
                        match ty {
                            proto::EV_CREATED | proto::EV_DATA_CHANGED => {
                                fire_path(&mut st.data_watches, &path)
                            }
                            proto::EV_DELETED => {
                                fire_path(&mut st.data_watches, &path);
                                fire_path(&mut st.child_watches, &path);
                            }
                            proto::EV_CHILDREN_CHANGED => fire_path(&mut st.child_watches, &path),
                            _ => {}
                        }
                    }
                    proto::XID_PING => {}
                    proto::XID_AUTH => {
                        if err != 0 {
                            st.last_error =
                                format!("digest authentication failed: {}", proto::err_name(err));
                        }
                    }
                    _ => {
                        if let Some(tx) = st.pending.remove(&xid) {
                            let _ = tx.send(Ok((err, f[16..].to_vec())));
                        }
                    }
                }
            }
        }
        if st.last_heard.elapsed() > negotiated * 2 / 3 {
            return format!(
                "no answer from the server for {:.1} s",
                st.last_heard.elapsed().as_secs_f64()
            );
        }
        if st.last_sent.elapsed() >= negotiated / 3 {
            let mut p = W::new();
            p.i32(proto::XID_PING).i32(proto::OP_PING);
            let f = frame(&p);
            let ok = st.writer.as_mut().map(|w| w.write_all(&f).is_ok());
            if ok != Some(true) {
                return "cannot send a ping".into();
            }
            st.last_sent = Instant::now();
        }
    }
}
