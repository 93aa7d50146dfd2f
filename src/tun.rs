//! The TUN side of the data path, on two threads of its own, so the kernel's TUN work (reading
//! super-packets, and above all writing: the inner TCP receive runs in whoever writes the TUN)
//! runs on the other core while the node thread does crypto and UDP.
//!
//! - The **reader** thread reads what the TUN has (super-packets split into MTU-sized packets
//!   when offloading, else one packet per read) into a [`TunBatch`] until the device has
//!   nothing more or the batch is full, and hands the batch to the node thread. Batches are
//!   reused: the node thread sends each back once it has handled its packets, and at most
//!   [`MAX_BATCHES`] exist, so a stalled node thread stops the reader instead of growing a
//!   queue.
//! - The **writer** thread takes batches of packets the node made for the TUN (each behind
//!   [`Tun::headroom`] bytes), joins what is queued into one batch, coalesces TCP/UDP runs
//!   (GRO) when offloading, and writes them. Its queue holds [`WRITE_QUEUE`] batches; when it
//!   is full the node thread waits (TUN writes don't block for long, so this is back-pressure,
//!   not a stall).
//!
//! Each direction is one FIFO handled by one thread, so a flow's packets keep their order.
//! The node itself never leaves the node thread.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use tun_rs::{GROTable, SyncDevice};

use crate::gro::HeadPool;

/// Bytes of the virtio header in front of every packet on an offloading TUN.
pub const VNET_HDR: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// Batches of read packets that exist at once (in the reader, queued, or at the node).
pub const MAX_BATCHES: usize = 4;
/// Batches of packets to write that may wait for the writer thread.
pub const WRITE_QUEUE: usize = 4;
/// Packets per read batch when offloading: two 64 KB super-packets of MTU-sized segments.
const OFFLOAD_BATCH: usize = 128;
/// Segments one offloaded read may need: a 64 KB super-packet cut at an MSS of at least
/// 1024 bytes (the TUN MTU is never under IPv6's 1280).
const SEGMENTS_PER_READ: usize = 64;
/// Packets per read batch without offloads (one per read).
const PLAIN_BATCH: usize = 64;
/// Packets the writer joins into one GRO pass.
const WRITE_BATCH: usize = 128;
/// A read buffer: the virtio header and the largest super-packet.
const RAW_BUF: usize = VNET_HDR + 65536;

/// Packets read from the TUN, handed to the node thread in one piece.
pub struct TunBatch {
    segs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    len: usize,
}

impl TunBatch {
    fn new(packets: usize, seg_len: usize) -> TunBatch {
        TunBatch {
            // One allocation per segment, made fresh (not cloned, which would write every page):
            // memory the reader never fills stays unresident.
            segs: (0..packets).map(|_| vec![0u8; seg_len]).collect(),
            sizes: vec![0; packets],
            len: 0,
        }
    }

    /// The packets, in the order they were read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.segs[..self.len]
            .iter()
            .zip(&self.sizes[..self.len])
            .map(|(s, &n)| &s[..n])
    }
}

/// The node thread's end of the TUN threads.
pub struct Tun {
    read: tokio::sync::mpsc::Receiver<TunBatch>,
    free: std_mpsc::Sender<TunBatch>,
    write: std_mpsc::SyncSender<Vec<Vec<u8>>>,
    written: std_mpsc::Receiver<Vec<Vec<u8>>>,
    inline: Option<(Writer, Vec<Vec<u8>>)>,
    headroom: usize,
    write_failed: bool,
}

impl Tun {
    /// Starts the reader and writer threads on an open device. `offload` says whether it was
    /// opened with virtio headers; `mtu` bounds the packets it hands over without a
    /// super-packet (a larger one is read cut short, and the node answers it with "too big").
    pub fn start(dev: SyncDevice, offload: bool, mtu: usize) -> io::Result<Tun> {
        // Non-blocking, so the reader can take everything that is queued and then hand it over
        // in one batch; it waits in poll(2) when the device is empty.
        dev.set_nonblocking(true)?;
        let dev = Arc::new(dev);
        let (read_tx, read_rx) = tokio::sync::mpsc::channel(MAX_BATCHES);
        let (free_tx, free_rx) = std_mpsc::channel();
        let (write_tx, write_rx) = std_mpsc::sync_channel(WRITE_QUEUE);
        let (written_tx, written_rx) = std_mpsc::channel();
        let seg_len = (mtu.max(1280) + 256).next_multiple_of(64);
        let reader = Reader {
            dev: dev.clone(),
            offload,
            seg_len,
            raw: if offload {
                vec![0u8; RAW_BUF]
            } else {
                Vec::new()
            },
            batches_made: 0,
            read_tx,
            free_rx,
        };
        std::thread::Builder::new()
            .name("meshd-tun-rx".into())
            .spawn(move || reader.run())?;
        let writer = Writer {
            dev,
            offload,
            gro: GROTable::default(),
            heads: HeadPool::default(),
            write_rx,
            written_tx,
        };
        let inline = std::env::var("MESHD_TUN_WRITER").is_ok_and(|v| v == "0");
        let inline = if inline {
            Some((writer, Vec::new()))
        } else {
            std::thread::Builder::new()
                .name("meshd-tun-tx".into())
                .spawn(move || writer.run())?;
            None
        };
        Ok(Tun {
            read: read_rx,
            free: free_tx,
            write: write_tx,
            written: written_rx,
            inline,
            headroom: if offload { VNET_HDR } else { 0 },
            write_failed: false,
        })
    }

    /// Headroom the node must leave in front of packets it hands us.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Waits for the next batch of packets read from the TUN (`None` once the reader is gone).
    pub async fn recv(&mut self) -> Option<TunBatch> {
        self.read.recv().await
    }

    /// The next batch if one is already waiting.
    pub fn try_recv(&mut self) -> Option<TunBatch> {
        self.read.try_recv().ok()
    }

    /// Gives a handled batch back to the reader to fill again.
    pub fn recycle(&self, batch: TunBatch) {
        let _ = self.free.send(batch);
    }

    /// An empty list to collect packets for [`Tun::send`] in: one the writer has finished
    /// with if there is one (the packets it still holds are dropped here, on the thread that
    /// made them), else a new one.
    pub fn write_buffer(&mut self) -> Vec<Vec<u8>> {
        if let Some((_, v)) = &mut self.inline {
            let mut v = std::mem::take(v);
            v.clear();
            return v;
        }
        match self.written.try_recv() {
            Ok(mut v) => {
                v.clear();
                v
            }
            Err(_) => Vec::with_capacity(WRITE_BATCH),
        }
    }

    /// Queues packets (each behind [`Tun::headroom`] bytes) for the writer thread; waits while
    /// its queue is full.
    pub fn send(&mut self, packets: Vec<Vec<u8>>) {
        if let Some((w, spare)) = &mut self.inline {
            let mut packets = packets;
            w.write(&mut packets);
            *spare = packets;
            return;
        }
        if packets.is_empty() {
            return;
        }
        if self.write.send(packets).is_err() && !self.write_failed {
            self.write_failed = true;
            tracing::error!("the TUN writer thread is gone: packets for the TUN are dropped");
        }
    }
}

struct Reader {
    dev: Arc<SyncDevice>,
    offload: bool,
    seg_len: usize,
    raw: Vec<u8>,
    batches_made: usize,
    read_tx: tokio::sync::mpsc::Sender<TunBatch>,
    free_rx: std_mpsc::Receiver<TunBatch>,
}

impl Reader {
    fn run(mut self) {
        while let Some(mut batch) = self.empty_batch() {
            if let Err(e) = self.fill(&mut batch) {
                tracing::error!("TUN read: {e}; no more packets from the TUN");
                return;
            }
            // Never waits: at most MAX_BATCHES exist, and the channel holds that many.
            if self.read_tx.blocking_send(batch).is_err() {
                return; // the node thread is gone
            }
        }
    }

    /// A batch to fill: a handled one, a new one while fewer than MAX_BATCHES exist, or
    /// (waiting) the next one the node thread hands back. `None` once the node thread is gone.
    fn empty_batch(&mut self) -> Option<TunBatch> {
        match self.free_rx.try_recv() {
            Ok(b) => return Some(b),
            Err(std_mpsc::TryRecvError::Disconnected) => return None,
            Err(std_mpsc::TryRecvError::Empty) => {}
        }
        if self.batches_made < MAX_BATCHES {
            self.batches_made += 1;
            let n = if self.offload {
                OFFLOAD_BATCH
            } else {
                PLAIN_BATCH
            };
            return Some(TunBatch::new(n, self.seg_len));
        }
        self.free_rx.recv().ok()
    }

    /// Reads until the device is empty (after at least one packet) or the batch is full.
    /// Errors only when the device is unusable.
    fn fill(&mut self, batch: &mut TunBatch) -> io::Result<()> {
        batch.len = 0;
        let per_read = if self.offload { SEGMENTS_PER_READ } else { 1 };
        while batch.len + per_read <= batch.segs.len() {
            let at = batch.len;
            let r = if self.offload {
                self.dev.recv_multiple(
                    &mut self.raw,
                    &mut batch.segs[at..],
                    &mut batch.sizes[at..],
                    0,
                )
            } else {
                self.dev.recv(&mut batch.segs[at]).map(|n| {
                    batch.sizes[at] = n;
                    1
                })
            };
            match r {
                Ok(n) => batch.len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if batch.len > 0 {
                        return Ok(());
                    }
                    wait_readable(self.dev.as_raw_fd())?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if gone(&e) => return Err(e),
                // One bad packet (a super-packet tun-rs can't split): skip it.
                Err(e) => tracing::debug!("tun recv: {e}"),
            }
        }
        Ok(())
    }
}

struct Writer {
    dev: Arc<SyncDevice>,
    offload: bool,
    gro: GROTable,
    heads: HeadPool,
    write_rx: std_mpsc::Receiver<Vec<Vec<u8>>>,
    written_tx: std_mpsc::Sender<Vec<Vec<u8>>>,
}

impl Writer {
    fn run(mut self) {
        while let Ok(mut packets) = self.write_rx.recv() {
            // Join what else is queued, so GRO sees longer runs and one wake-up writes more.
            while packets.len() < WRITE_BATCH {
                let Ok(mut more) = self.write_rx.try_recv() else {
                    break;
                };
                packets.append(&mut more);
                let _ = self.written_tx.send(more);
            }
            self.write(&mut packets);
            if self.written_tx.send(packets).is_err() {
                return;
            }
        }
    }

    fn write(&mut self, packets: &mut [Vec<u8>]) {
        if self.offload {
            self.heads.prepare(packets, VNET_HDR);
            if let Err(e) = self.dev.send_multiple(&mut self.gro, packets, VNET_HDR) {
                tracing::debug!("tun send: {e}");
            }
            self.heads.reclaim(packets);
        } else {
            for p in packets.iter() {
                if let Err(e) = self.dev.send(p) {
                    tracing::debug!("tun send: {e}");
                }
            }
        }
    }
}

/// Whether a read error means the device itself is unusable (not one bad packet).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF) | Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EIO)
    )
}

/// Waits until `fd` has something to read (or an error to report).
fn wait_readable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `p` is one valid, initialized pollfd that outlives the call, and the count
        // passed is 1. poll(2) only writes `revents`.
        #[allow(unsafe_code)]
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_yields_packets_in_order_with_their_sizes() {
        let mut b = TunBatch::new(4, 64);
        for (k, n) in [3usize, 1, 5].into_iter().enumerate() {
            b.segs[k][..n].fill(k as u8 + 1);
            b.sizes[k] = n;
        }
        b.len = 3;
        let got: Vec<Vec<u8>> = b.packets().map(<[u8]>::to_vec).collect();
        assert_eq!(got, vec![vec![1; 3], vec![2; 1], vec![3; 5]]);
    }

    #[test]
    fn wait_readable_returns_when_data_is_there() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            a.send(b"x").unwrap();
        });
        wait_readable(b.as_raw_fd()).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(b.recv(&mut buf).unwrap(), 1);
    }
}
