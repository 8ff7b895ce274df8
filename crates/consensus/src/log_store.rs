//! The Raft log: Comity's write-ahead log.
//!
//! Records are appended to segment files `wal-<seq>.log` as
//! `[u32 LE length][u32 LE CRC-32C of salt ‖ payload][CBOR payload]`. A
//! segment starts with a magic, a random 16-byte salt of its own and a
//! checksum of both, so bytes inside a record (a client's value) can never
//! pass for a record of the segment. Older segments have the magic and salt
//! without the checksum, or (older still) no header, with CRCs over the
//! payload only.
//! A record is an entry, a truncation, a purge mark, the committed index or
//! a sync mark. Appends are made durable by one flusher thread that
//! fdatasyncs once for every append queued since its last sync (group
//! commit), writes a sync mark saying how much of the segment is now
//! durable, then acknowledges them in order.
//! The vote is a separate file replaced atomically (write, fsync, rename).
//!
//! On open, only a torn tail of the last segment, data that was never
//! synced, is discarded; damage anywhere else is an error naming the file
//! and offset. A power loss can leave unsynced blocks unwritten (zeros)
//! before written ones, so the torn tail is not always the last record: it
//! starts at the first damage that no later sync mark says was durable.

use crate::crc_span::CrcSpans;
use crate::{storage_io, Entry, LogId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageError, Vote};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Segment size at which a new log file starts.
pub const DEFAULT_ROLL_BYTES: u64 = 64 << 20;
const MAX_RECORD: u32 = 256 << 20;
/// Start of every segment written now: magic, salt, then the CRC-32C of
/// both. As a legacy record header it would claim a length over
/// [`MAX_RECORD`], so the formats cannot be confused.
const MAGIC: &[u8; 8] = b"CMTYWAL3";
const HEADER_LEN: usize = MAGIC.len() + SALT_LEN + 4;
/// Start of a segment written before sync marks: magic and salt only.
const MAGIC_V2: &[u8; 8] = b"CMTYWAL2";
const HEADER_LEN_V2: usize = MAGIC_V2.len() + SALT_LEN;
const SALT_LEN: usize = 16;

#[derive(Serialize, Deserialize)]
enum WalRecord {
    Entry(Entry),
    /// Entries at or after this index are gone.
    Truncate(u64),
    Purged(LogId),
    Committed(Option<LogId>),
    /// The first this many bytes of the segment were synced. Written after
    /// each sync, so that on open damage before it is told from a torn tail.
    Synced(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("Raft log file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Raft log file {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("Raft log file {path} is missing: {reason}")]
    Missing { path: PathBuf, reason: String },
}

/// Refuses a log with a hole: a segment removed from the middle or the
/// start, or a partial restore, would otherwise hand Raft a log that skips
/// entries. Segments are numbered from 0, and one is deleted only once a
/// later segment records a purge past its entries, so without a purge the
/// first, `first_seq`, must be segment 0.
fn check_contiguous(
    dir: &Path,
    first_seq: Option<u64>,
    entries: &BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
) -> Result<(), WalError> {
    if last_purged.is_none() && first_seq.is_some_and(|s| s != 0) {
        return Err(WalError::Missing {
            path: segment_path(dir, 0),
            reason: "later segments exist, but none records the purge that would have \
                     removed it (deleted or not restored?)"
                .into(),
        });
    }
    let mut expected = last_purged.map(|p| p.index + 1);
    for &index in entries.keys() {
        if let Some(want) = expected.filter(|w| *w != index) {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                reason: format!(
                    "entries {want} to {} are missing (a segment file removed or not restored?)",
                    index.saturating_sub(1)
                ),
            });
        }
        expected = Some(index + 1);
    }
    Ok(())
}

struct Segment {
    path: PathBuf,
    /// Highest entry index written into this segment.
    max_index: u64,
}

struct State {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote<u64>>,
    closed: Vec<Segment>,
    current: Segment,
    current_seq: u64,
    writer: BufWriter<File>,
    /// The current segment's file, for the flusher to sync.
    sync: Arc<File>,
    /// Checksum seed of the current segment.
    seed: u32,
    /// Bytes of the current segment handed to the OS.
    len: u64,
    /// Set by a failed write or sync: the file may end in part of a
    /// record, `len` may count bytes not handed to the OS, and Linux
    /// reports a failed writeback once (a later sync would succeed over
    /// lost data), so nothing more is written, synced or marked (Raft
    /// stops; a restart reads what is there).
    failed: bool,
}

impl State {
    fn usable(&self) -> std::io::Result<()> {
        if self.failed {
            return Err(std::io::Error::other(
                "an earlier write to the Raft log failed; restart the node",
            ));
        }
        Ok(())
    }
}

/// How far the log is no longer needed: the state machine's state, or a
/// snapshot install it will resume, is durable up to this index. openraft
/// asks to purge as soon as it hands a snapshot to the state machine, which
/// may not have recorded it yet; a purge waits for this to reach it, so a
/// crash in between never leaves a node whose log starts past its state.
#[derive(Clone)]
pub struct PurgeFloor(Arc<tokio::sync::watch::Sender<u64>>);

impl PurgeFloor {
    pub fn new(durable: u64) -> PurgeFloor {
        PurgeFloor(Arc::new(tokio::sync::watch::Sender::new(durable)))
    }

    /// How far everything is durable.
    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Records that everything up to `index` is durable.
    pub fn raise(&self, index: u64) {
        self.0.send_if_modified(|v| {
            let higher = index > *v;
            if higher {
                *v = index;
            }
            higher
        });
    }

    async fn reached(&self, index: u64) {
        let mut rx = self.0.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|&v| v >= index).await;
    }
}

/// How long a purge waits for its [`PurgeFloor`].
pub const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    /// Set by the node: see [`PurgeFloor`].
    floor: std::sync::OnceLock<PurgeFloor>,
    flush_tx: Mutex<mpsc::Sender<LogFlushed<TypeConfig>>>,
    roll_bytes: u64,
}

/// The Raft log storage, cheap to clone (clones share one log).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A record's checksum in a segment whose salt has CRC `seed` (0 for a
/// segment without a salt).
fn checksum(seed: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(seed, payload)
}

fn frame(rec: &WalRecord, seed: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(256);
    ciborium::into_writer(rec, &mut payload).expect("encoding a WAL record cannot fail");
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(seed, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A segment being appended to.
struct Started {
    writer: BufWriter<File>,
    sync: Arc<File>,
    seed: u32,
    len: u64,
}

/// Creates segment `path` with a fresh salt, restating the purge mark and
/// committed index (so older segments can be deleted), durably.
fn start_segment(
    dir: &Path,
    path: &Path,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
) -> Result<Started, WalError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let sync = Arc::new(file.try_clone().map_err(io(path))?);
    let mut salt = [0u8; SALT_LEN];
    rand_core::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| io(path)(std::io::Error::other(e)))?;
    let seed = crc32c::crc32c(&salt);
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut head = [MAGIC.as_slice(), &salt].concat();
    head.extend(crc32c::crc32c(&head).to_le_bytes());
    if let Some(p) = last_purged {
        head.extend(frame(&WalRecord::Purged(p), seed));
    }
    head.extend(frame(&WalRecord::Committed(committed), seed));
    writer.write_all(&head).map_err(io(path))?;
    writer.flush().map_err(io(path))?;
    sync.sync_data().map_err(io(path))?;
    sync_dir(dir)?;
    // Unsynced, like every mark: see the flusher.
    let mark = frame(&WalRecord::Synced(head.len() as u64), seed);
    writer.write_all(&mark).map_err(io(path))?;
    writer.flush().map_err(io(path))?;
    Ok(Started {
        writer,
        sync,
        seed,
        len: (head.len() + mark.len()) as u64,
    })
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl LogStore {
    /// The highest log index known committed (saved by Raft), for status reports.
    pub fn committed_index(&self) -> Option<u64> {
        self.inner
            .state
            .lock()
            .expect("log lock")
            .committed
            .map(|c| c.index)
    }

    /// Opens (or creates) the log in `dir`, replaying every segment.
    pub fn open(dir: &Path) -> Result<LogStore, WalError> {
        Self::open_with(dir, DEFAULT_ROLL_BYTES)
    }

    /// [`LogStore::open`] with a chosen segment size.
    pub fn open_with(dir: &Path, roll_bytes: u64) -> Result<LogStore, WalError> {
        comity_store::dirs::create_dir_all_synced(dir).map_err(io(dir))?;
        // An unreadable directory entry could be a segment: fail rather than skip it.
        let mut seqs: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let name = e.map_err(io(dir))?.file_name();
            let seq: Option<u64> = name
                .to_str()
                .and_then(|n| n.strip_prefix("wal-")?.strip_suffix(".log")?.parse().ok());
            seqs.extend(seq);
        }
        seqs.sort_unstable();
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let mut committed = None;
        let mut closed = Vec::new();
        let mut reuse = None;
        for (i, seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, *seq);
            let last = i + 1 == seqs.len();
            let mut max_index = 0;
            replay(&path, last, |rec| match rec {
                WalRecord::Entry(e) => {
                    max_index = max_index.max(e.log_id.index);
                    entries.insert(e.log_id.index, e);
                }
                WalRecord::Truncate(from) => {
                    entries.split_off(&from);
                }
                WalRecord::Purged(id) => {
                    entries = entries.split_off(&(id.index + 1));
                    last_purged = Some(id);
                }
                WalRecord::Committed(c) => committed = c,
                WalRecord::Synced(_) => {}
            })?;
            if last && std::fs::metadata(&path).map_err(io(&path))?.len() == 0 {
                // Its header was torn (cut to nothing above): the file goes
                // and its number is used again, so that no later start finds
                // an empty segment in the middle of the log.
                std::fs::remove_file(&path).map_err(io(&path))?;
                sync_dir(dir)?;
                reuse = Some(*seq);
                break;
            }
            closed.push(Segment { path, max_index });
        }
        seqs.truncate(closed.len());
        check_contiguous(dir, seqs.first().copied(), &entries, last_purged)?;
        // What a crash left unsynced in the last segment is served from now
        // on (and may count towards a commit): make it durable before the
        // next segment, lest a power loss cut it from under later entries.
        if let Some(last) = closed.last() {
            std::fs::File::open(&last.path)
                .and_then(|f| f.sync_data())
                .map_err(io(&last.path))?;
        }
        let current_seq = reuse.unwrap_or_else(|| seqs.last().map_or(0, |s| s + 1));
        let path = segment_path(dir, current_seq);
        let Started {
            writer,
            sync,
            seed,
            len,
        } = start_segment(dir, &path, last_purged, committed)?;
        let vote = read_vote(dir)?;
        let state = State {
            entries,
            last_purged,
            committed,
            vote,
            closed,
            current: Segment { path, max_index: 0 },
            current_seq,
            writer,
            sync,
            seed,
            len,
            failed: false,
        };
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            state: Mutex::new(state),
            floor: std::sync::OnceLock::new(),
            flush_tx: Mutex::new(tx),
            roll_bytes,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || flusher(weak, rx))
            .map_err(io(dir))?;
        let store = LogStore { inner };
        store.delete_old_segments();
        Ok(store)
    }

    /// Makes purges wait for `floor` (see [`PurgeFloor`]); set once. Refuses
    /// a floor below what the log has purged already: the state it stands
    /// for went back past entries only it held (a damaged database journal
    /// losing durable writes, or an older copy restored), and Raft could
    /// not re-apply them.
    pub fn guard_purges(&self, floor: PurgeFloor) -> Result<(), String> {
        let purged = self.inner.state.lock().expect("log lock").last_purged;
        if let Some(p) = purged.filter(|p| p.index > floor.get()) {
            return Err(format!(
                "the state is durable only up to Raft log entry {}, but the Raft log in {} was purged up to entry {} after the state reached it: the state went back (a damaged database journal, or a state directory older than the Raft log)",
                floor.get(),
                self.inner.dir.display(),
                p.index
            ));
        }
        let _ = self.inner.floor.set(floor);
        Ok(())
    }

    /// Deletes the oldest closed segments whose entries are all purged. Only
    /// a prefix goes: a later segment may hold the truncation that keeps an
    /// earlier segment's higher entries from coming back on replay.
    fn delete_old_segments(&self) {
        let mut st = self.inner.state.lock().expect("log lock");
        let Some(purged) = st.last_purged.map(|p| p.index) else {
            return;
        };
        let mut deleted = 0;
        for s in st.closed.iter().take_while(|s| s.max_index <= purged) {
            if let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(path = %s.path.display(), error = %e, "could not delete an old Raft log segment");
                break;
            }
            deleted += 1;
        }
        st.closed.drain(..deleted);
    }
}

impl Inner {
    fn write(&self, st: &mut State, recs: &[WalRecord]) -> Result<(), StorageError<u64>> {
        let err = |e: std::io::Error| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e);
        st.usable().map_err(err)?;
        let frames: Vec<Vec<u8>> = recs.iter().map(|r| frame(r, st.seed)).collect();
        // Replay would take an over-limit record for a torn tail: refuse the
        // whole append before any of it is written.
        if let Some(f) = frames.iter().find(|f| f.len() - 8 > MAX_RECORD as usize) {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a Raft log record of {} bytes is over the limit",
                    f.len() - 8
                ),
            )));
        }
        st.failed = true; // until everything below succeeds
        for (r, f) in recs.iter().zip(&frames) {
            st.writer.write_all(f).map_err(err)?;
            st.len += f.len() as u64;
            if let WalRecord::Entry(e) = r {
                st.current.max_index = st.current.max_index.max(e.log_id.index);
            }
        }
        st.writer.flush().map_err(err)?;
        if st.len >= self.roll_bytes {
            self.roll(st)
                .map_err(|e| storage_io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        }
        st.failed = false;
        Ok(())
    }

    /// Starts a new segment; the old one is synced first so queued acknowledgements stay true.
    fn roll(&self, st: &mut State) -> Result<(), WalError> {
        st.writer.flush().map_err(io(&st.current.path))?;
        st.writer
            .get_ref()
            .sync_data()
            .map_err(io(&st.current.path))?;
        let seq = st.current_seq + 1;
        let path = segment_path(&self.dir, seq);
        let Started {
            writer,
            sync,
            seed,
            len,
        } = start_segment(&self.dir, &path, st.last_purged, st.committed)?;
        st.current_seq = seq;
        let old = std::mem::replace(
            &mut st.current,
            Segment {
                path: path.clone(),
                max_index: 0,
            },
        );
        st.closed.push(old);
        st.writer = writer;
        st.sync = sync;
        st.seed = seed;
        st.len = len;
        Ok(())
    }
}

fn flusher(inner: std::sync::Weak<Inner>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let Some(inner) = inner.upgrade() else { return };
        let (file, seq, len, usable) = {
            let st = inner.state.lock().expect("log lock");
            (st.sync.clone(), st.current_seq, st.len, st.usable())
        };
        let t0 = std::time::Instant::now();
        let res = usable.and_then(|()| file.sync_data());
        metrics::histogram!("comity_wal_sync_seconds").record(t0.elapsed().as_secs_f64());
        if res.is_err() {
            inner.state.lock().expect("log lock").failed = true;
        }
        let res = res.and_then(|()| {
            // Marked before the acknowledgements, so that everything they
            // acknowledge has a mark after it once the node stops. A
            // failure is Raft's to see, as with any append.
            let mut st = inner.state.lock().expect("log lock");
            if st.current_seq != seq {
                return Ok(()); // rolled: the old segment was synced whole
            }
            inner
                .write(&mut st, &[WalRecord::Synced(len)])
                .map_err(std::io::Error::other)
        });
        drop(inner);
        metrics::histogram!("comity_wal_appends_per_sync").record(batch.len() as f64);
        for cb in batch {
            cb.log_io_completed(
                res.as_ref()
                    .map(|_| ())
                    .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
            );
        }
    }
}

fn read_vote(dir: &Path) -> Result<Option<Vote<u64>>, WalError> {
    let path = dir.join("vote");
    match std::fs::read(&path) {
        Ok(b) => {
            let (crc, body) = b.split_at_checked(4).ok_or_else(|| WalError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: "vote file too short".into(),
            })?;
            if crc32c::crc32c(body).to_le_bytes() != crc {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: "vote checksum mismatch".into(),
                });
            }
            ciborium::from_reader(body)
                .map(Some)
                .map_err(|e| WalError::Corrupt {
                    path,
                    offset: 4,
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalError::Io { path, source: e }),
    }
}

fn write_vote(dir: &Path, vote: &Vote<u64>) -> Result<(), WalError> {
    let mut body = Vec::new();
    ciborium::into_writer(vote, &mut body).expect("encoding a vote cannot fail");
    let mut b = crc32c::crc32c(&body).to_le_bytes().to_vec();
    b.extend_from_slice(&body);
    let tmp = dir.join("vote.tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&b).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join("vote")).map_err(io(dir))?;
    sync_dir(dir)
}

fn truncate(path: &Path, len: usize) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    file.set_len(len as u64).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Replays one segment. In the last segment a torn tail (see the module
/// docs) is cut off.
fn replay(path: &Path, last: bool, mut f: impl FnMut(WalRecord)) -> Result<(), WalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut data))
        .map_err(io(path))?;
    let corrupt = |offset: usize, reason: &str| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_string(),
    };
    let torn_header = data.len() < HEADER_LEN
        && [MAGIC, MAGIC_V2]
            .iter()
            .any(|m| data.starts_with(*m) || m.starts_with(&data))
        || data.iter().all(|&b| b == 0);
    let (mut off, seed, marked) = if let Some(head) =
        data.get(..HEADER_LEN).filter(|h| h.starts_with(MAGIC))
    {
        let (body, crc) = head.split_at(HEADER_LEN - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            // Not a torn write: cutting here would drop acknowledged entries.
            return Err(corrupt(0, "damaged segment header"));
        }
        (HEADER_LEN, crc32c::crc32c(&body[MAGIC.len()..]), true)
    } else if let Some(head) = data
        .get(..HEADER_LEN_V2)
        .filter(|h| h.starts_with(MAGIC_V2))
    {
        (
            HEADER_LEN_V2,
            crc32c::crc32c(&head[MAGIC_V2.len()..]),
            false,
        )
    } else if torn_header {
        // Empty, or a header cut short or left unwritten: nothing in it was
        // ever acknowledged if it is the last segment.
        if !last {
            return Err(corrupt(0, "incomplete segment header"));
        }
        if !data.is_empty() {
            tracing::warn!(path = %path.display(), "discarding a torn Raft log segment header (never acknowledged)");
        }
        return truncate(path, 0);
    } else if record_at(&data, 0, 0).is_ok() {
        (0, 0, false) // a segment from before headers: frames from the start, unsalted
    } else {
        return Err(corrupt(
            0,
            "damaged segment header (or, in a segment from before headers, a checksum mismatch in its first record)",
        ));
    };
    while off < data.len() {
        let end = match record_at(&data, off, seed) {
            Ok(end) => end,
            Err(bad) => {
                if !last {
                    return Err(corrupt(off, bad.reason()));
                }
                if marked {
                    if let Some(synced) = synced_past(&data, off, seed) {
                        return Err(corrupt(
                            off,
                            &format!(
                                "{} within the first {synced} bytes, which a later sync mark says were durable",
                                bad.reason()
                            ),
                        ));
                    }
                } else if let Some(why) = unmarked_damage(bad, &data, off, seed) {
                    return Err(corrupt(off, why));
                }
                tracing::warn!(path = %path.display(), offset = off, reason = bad.reason(), "discarding a torn Raft log tail (never acknowledged)");
                break;
            }
        };
        let rec: WalRecord = ciborium::from_reader(&data[off + 8..end])
            .map_err(|e| corrupt(off, &format!("undecodable record: {e}")))?;
        f(rec);
        off = end;
    }
    if off < data.len() {
        truncate(path, off)?;
    }
    Ok(())
}

/// Why no record of the segment starts at an offset.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Short,
    ZeroLength,
    PastEnd,
    Checksum { end: usize },
}

impl Bad {
    fn reason(self) -> &'static str {
        match self {
            Bad::Short => "incomplete record header",
            Bad::ZeroLength => "zero-length record",
            Bad::PastEnd => "record runs past the end of the file",
            Bad::Checksum { .. } => "checksum mismatch",
        }
    }
}

/// The end of the record of the segment starting at `off`.
fn record_at(data: &[u8], off: usize, seed: u32) -> Result<usize, Bad> {
    let head = data.get(off..off + 8).ok_or(Bad::Short)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    let end = off + 8 + len as usize;
    if len == 0 {
        Err(Bad::ZeroLength)
    } else if len > MAX_RECORD || end > data.len() {
        Err(Bad::PastEnd)
    } else if checksum(seed, &data[off + 8..end]) != crc {
        Err(Bad::Checksum { end })
    } else {
        Ok(end)
    }
}

/// In the last segment of a log written before sync marks, why `bad` at
/// `off` is damage rather than a torn final record, if it is. A torn write
/// leaves nothing valid after it, at most zeros (blocks left unwritten
/// after the file grew); a damaged length or checksum does.
fn unmarked_damage(bad: Bad, data: &[u8], off: usize, seed: u32) -> Option<&'static str> {
    let zeros_from = |at: usize| data[at..].iter().all(|&b| b == 0);
    match bad {
        Bad::Short => None,
        Bad::ZeroLength => (!zeros_from(off)).then_some(bad.reason()),
        Bad::PastEnd => valid_frame_after(data, off + 1, seed)
            .then_some("damaged record length with valid records after it"),
        Bad::Checksum { end } => (!zeros_from(end)).then_some(bad.reason()),
    }
}

/// Payloads of the checksum-valid records starting anywhere at or after
/// `from`. With a salted segment only the node's own records can pass,
/// never bytes a client chose. The bytes after a torn record are a
/// client's, which could make every offset claim a long record: each claim
/// is checked from prefix checksums ([`CrcSpans`]), in time linear in the
/// tail, not quadratic.
fn frames_after(data: &[u8], from: usize, seed: u32) -> impl Iterator<Item = &[u8]> {
    let tail = &data[from.min(data.len())..];
    let spans = CrcSpans::new(tail);
    (0..tail.len().saturating_sub(8)).filter_map(move |t| {
        let len = u32::from_le_bytes(tail[t..t + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(tail[t + 4..t + 8].try_into().expect("4 bytes"));
        (len > 0
            && len <= MAX_RECORD as usize
            && t + 8 + len <= tail.len()
            && spans.span(seed, t + 8, t + 8 + len) == crc)
            .then(|| &tail[t + 8..t + 8 + len])
    })
}

fn valid_frame_after(data: &[u8], from: usize, seed: u32) -> bool {
    frames_after(data, from, seed).next().is_some()
}

/// How much of the segment a sync mark after `off` says was durable, if
/// that covers `off`: damage there is not a torn tail.
fn synced_past(data: &[u8], off: usize, seed: u32) -> Option<u64> {
    // A mark encodes to a few bytes; entries are not decoded to find one.
    frames_after(data, off + 1, seed)
        .filter(|p| p.len() <= 32)
        .find_map(|p| match ciborium::from_reader(p) {
            Ok(WalRecord::Synced(s)) if s > off as u64 => Some(s),
            _ => None,
        })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let st = self.inner.state.lock().expect("log lock");
        Ok(st.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let st = self.inner.state.lock().expect("log lock");
        let last = st
            .entries
            .last_key_value()
            .map(|(_, e)| *e.get_log_id())
            .or(st.last_purged);
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut st = self.inner.state.lock().expect("log lock");
        let err = |e| storage_io(ErrorSubject::Vote, ErrorVerb::Write, e);
        // Writes are serialized: everything appended before the vote is made durable first.
        let synced = st
            .usable()
            .and_then(|()| st.writer.flush())
            .and_then(|()| st.writer.get_ref().sync_data());
        synced.map_err(|e| {
            st.failed = true;
            err(WalError::Io {
                path: st.current.path.clone(),
                source: e,
            })
        })?;
        write_vote(&self.inner.dir, vote).map_err(err)?;
        st.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.inner.state.lock().expect("log lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let mut st = self.inner.state.lock().expect("log lock");
        st.committed = committed;
        self.inner
            .write(&mut st, &[WalRecord::Committed(committed)])
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.inner.state.lock().expect("log lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut st = self.inner.state.lock().expect("log lock");
            let recs: Vec<WalRecord> = entries.into_iter().map(WalRecord::Entry).collect();
            self.inner.write(&mut st, &recs)?;
            for r in recs {
                if let WalRecord::Entry(e) = r {
                    st.entries.insert(e.log_id.index, e);
                }
            }
        }
        self.inner
            .flush_tx
            .lock()
            .expect("flush lock")
            .send(callback)
            .map_err(|_| storage_io(ErrorSubject::Logs, ErrorVerb::Write, "log flusher stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let mut st = self.inner.state.lock().expect("log lock");
        // A leader never conflicts with a committed entry; openraft does not
        // check, so a faulty one could have applied history rewritten under
        // the ledger (replayed differently after a crash). Raft stops instead.
        if let Some(c) = st.committed.filter(|c| log_id.index <= c.index) {
            let e = format!(
                "refusing to truncate the Raft log at {}: entries up to {} are committed (the leader is faulty)",
                log_id.index, c.index
            );
            return Err(storage_io(ErrorSubject::Logs, ErrorVerb::Delete, e));
        }
        st.entries.split_off(&log_id.index);
        self.inner
            .write(&mut st, &[WalRecord::Truncate(log_id.index)])
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        if let Some(floor) = self.inner.floor.get() {
            // The state machine records an install within one commit; if it
            // fails to, Raft stops rather than purging (or waiting) for ever.
            if tokio::time::timeout(PURGE_WAIT, floor.reached(log_id.index))
                .await
                .is_err()
            {
                let e = format!(
                    "not purging the Raft log up to {}: the state is not durable there after {} s",
                    log_id.index,
                    PURGE_WAIT.as_secs()
                );
                return Err(storage_io(ErrorSubject::Logs, ErrorVerb::Delete, e));
            }
        }
        {
            let mut st = self.inner.state.lock().expect("log lock");
            st.entries = st.entries.split_off(&(log_id.index + 1));
            st.last_purged = Some(log_id);
            self.inner.write(&mut st, &[WalRecord::Purged(log_id)])?;
            // The purge mark must be durable before older segments disappear.
            if let Err(e) = st.writer.get_ref().sync_data() {
                st.failed = true;
                return Err(storage_io(ErrorSubject::Logs, ErrorVerb::Write, e));
            }
        }
        self.delete_old_segments();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scan_after_a_torn_record_is_linear_and_finds_a_real_frame() {
        // 4 MiB in which every fourth offset claims a record running to
        // near the end: hashed offset by offset, some 2^41 bytes.
        let n = 4 << 20;
        let lengths: Vec<u8> = (0..n / 4)
            .flat_map(|i: usize| ((n - 4 * i).saturating_sub(16) as u32).to_le_bytes())
            .collect();
        let t0 = std::time::Instant::now();
        assert!(!super::valid_frame_after(&lengths, 1, 7));
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
        let payload = b"a record of this node's";
        let mut with_frame = vec![0xee; 100];
        with_frame.extend((payload.len() as u32).to_le_bytes());
        with_frame.extend(super::checksum(7, payload).to_le_bytes());
        with_frame.extend(payload);
        assert!(super::valid_frame_after(&with_frame, 1, 7));
        assert!(
            !super::valid_frame_after(&with_frame, 1, 8),
            "another segment's salt"
        );
    }

    use super::*;
    use comity_apps::Command;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};
    use serde_bytes::ByteBuf;

    fn entry(index: u64, term: u64) -> Entry {
        sized_entry(index, term, 300)
    }

    fn sized_entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::Batch {
                time: index,
                txs: vec![ByteBuf::from(vec![index as u8; bytes])],
            }),
        }
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn indexes(s: &mut LogStore) -> Vec<u64> {
        s.try_get_log_entries(0..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// openraft asks for a purge as soon as it hands a snapshot over; the
    /// purge waits until the state machine says that point is durable.
    #[test]
    fn a_purge_waits_for_its_floor_and_a_floor_below_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            s.blocking_append((1..=40).map(|i| entry(i, 1)))
                .await
                .unwrap();
            let floor = PurgeFloor::new(10);
            s.guard_purges(floor.clone()).unwrap();
            let mut p = s.clone();
            let purge = tokio::spawn(async move { p.purge(log_id(1, 30)).await.unwrap() });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(!purge.is_finished(), "purged past the durable point");
            assert_eq!(indexes(&mut s).await.first(), Some(&1));
            floor.raise(30);
            purge.await.unwrap();
            assert_eq!(indexes(&mut s).await.first(), Some(&31));
        });
        // State that went back past the purge cannot be rebuilt from the
        // log: the node is refused, not left to fail later.
        let s = LogStore::open_with(dir.path(), 4096).unwrap();
        let e = s.guard_purges(PurgeFloor::new(29)).unwrap_err();
        assert!(
            e.contains("purged up to entry 30") && e.contains("went back"),
            "{e}"
        );
        s.guard_purges(PurgeFloor::new(30)).unwrap();
    }

    #[test]
    fn committed_entries_are_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            s.blocking_append((1..=10).map(|i| entry(i, 1)))
                .await
                .unwrap();
            s.save_committed(Some(log_id(1, 6))).await.unwrap();
            let e = s.truncate(log_id(1, 6)).await.unwrap_err();
            assert!(e.to_string().contains("committed"), "{e}");
            assert_eq!(indexes(&mut s).await.len(), 10);
            s.truncate(log_id(1, 7)).await.unwrap();
            assert_eq!(indexes(&mut s).await, (1..=6).collect::<Vec<_>>());
        });
    }

    #[test]
    fn survives_reopen_with_truncate_purge_vote_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            s.blocking_append((1..=40).map(|i| entry(i, 1)))
                .await
                .unwrap();
            s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 31))
                .await
                .unwrap();
            s.blocking_append((31..=35).map(|i| entry(i, 2)))
                .await
                .unwrap();
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 20))
                .await
                .unwrap();
            let vote = Vote::new(2, 1);
            s.save_vote(&vote).await.unwrap();
            s.save_committed(Some(LogId::new(CommittedLeaderId::new(2, 1), 33)))
                .await
                .unwrap();
            s.blocking_append([entry(36, 2)]).await.unwrap();
        });
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            assert_eq!(indexes(&mut s).await, (21..=36).collect::<Vec<_>>());
            let e = s.try_get_log_entries(31..32).await.unwrap();
            assert_eq!(
                e[0].log_id.leader_id.term, 2,
                "truncated entries must stay truncated"
            );
            assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
            assert_eq!(s.read_committed().await.unwrap().map(|c| c.index), Some(33));
            let st = s.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(20));
            assert_eq!(st.last_log_id.map(|l| l.index), Some(36));
        });
        // Segments wholly below the purge point were deleted.
        assert!(
            segments < 12,
            "old segments were not deleted ({segments} files)"
        );
    }

    #[test]
    fn a_missing_segment_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            for i in 1..=6 {
                s.blocking_append([sized_entry(i, 1, 3000)]).await.unwrap();
            }
        });
        let mut segs: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 4, "{segs:?}");
        std::fs::remove_file(&segs[1]).unwrap();
        let e = LogStore::open_with(dir.path(), 4096)
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("are missing"), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        // The first segment of a log never purged is missed too.
        std::fs::remove_file(&segs[0]).unwrap();
        let e = LogStore::open_with(dir.path(), 4096)
            .err()
            .expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(&segs[0].display().to_string()), "{msg}");
        assert!(msg.contains("is missing"), "{msg}");
    }

    #[test]
    fn a_purged_segment_after_a_live_one_is_kept_for_its_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let files = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".log"))
                .collect();
            v.sort();
            v
        };
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            // Segment 0: entries 1..=11 of term 1 (the last one rolls the log).
            s.blocking_append((1..=10).map(|i| entry(i, 1)))
                .await
                .unwrap();
            s.blocking_append([sized_entry(11, 1, 5000)]).await.unwrap();
            // Segment 1: a new leader's log replaces 6..=11 with its entry 6.
            s.truncate(log_id(1, 6)).await.unwrap();
            s.blocking_append([sized_entry(6, 2, 5000)]).await.unwrap();
            // Segment 2: entry 7, and a purge up to 6, which segment 1 is
            // wholly below but segment 0 is not.
            s.blocking_append([entry(7, 2)]).await.unwrap();
            s.purge(log_id(2, 6)).await.unwrap();
        });
        let before = files(dir.path());
        assert!(before.len() >= 3, "{before:?}");
        rt().block_on(async {
            let mut s = LogStore::open_with(dir.path(), 4096).unwrap();
            // Without segment 1's truncation, replay would bring back the
            // old term's entries 8..=11 after the new entry 7.
            let e = s.try_get_log_entries(0..).await.unwrap();
            let ids: Vec<_> = e
                .iter()
                .map(|e| (e.log_id.leader_id.term, e.log_id.index))
                .collect();
            assert_eq!(ids, vec![(2, 7)]);
        });
        let after = files(dir.path());
        assert!(
            before.iter().take(2).all(|f| after.contains(f)),
            "segments 0 and 1 must stay: {before:?} -> {after:?}"
        );
    }

    #[test]
    fn an_over_limit_record_is_refused_and_nothing_of_its_append_is_written() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            s.blocking_append((1..=3).map(|i| entry(i, 1)))
                .await
                .unwrap();
            let huge = sized_entry(5, 1, MAX_RECORD as usize + 1);
            let err = s
                .blocking_append([entry(4, 1), huge])
                .await
                .expect_err("an over-limit record must be refused");
            assert!(err.to_string().contains("over the limit"), "{err}");
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
        });
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(
                indexes(&mut s).await,
                vec![1, 2, 3],
                "entry 4 was not written"
            );
            s.blocking_append([entry(4, 1)]).await.unwrap();
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
        });
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
            .collect();
        v.sort();
        v.pop().unwrap()
    }

    /// Why opening the log in `dir` is refused (it must be).
    fn refusal(dir: &Path) -> String {
        LogStore::open(dir)
            .err()
            .expect("opening must be refused")
            .to_string()
    }

    /// Opening `dir` must be refused with an error naming `file` and saying `why`.
    fn assert_refused_naming(dir: &Path, file: &Path, why: &str) {
        let err = refusal(dir);
        assert!(
            err.contains(&file.display().to_string()) && err.contains(why),
            "{err}"
        );
    }

    /// Cuts file `path` to `len` bytes, as a torn write would leave it.
    fn cut(path: &Path, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    /// A log holding entries 1..=10 in one segment, and that segment's path.
    fn ten_entries() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            s.blocking_append((1..=10).map(|i| entry(i, 1)))
                .await
                .unwrap();
        });
        let seg = newest_segment(dir.path());
        (dir, seg)
    }

    /// The records of a salted segment: offset, end, and whether it is a
    /// sync mark.
    fn records(b: &[u8]) -> Vec<(usize, usize, bool)> {
        let seed = crc32c::crc32c(&b[MAGIC.len()..MAGIC.len() + SALT_LEN]);
        let mut out = Vec::new();
        let mut off = if b.starts_with(MAGIC) {
            HEADER_LEN
        } else {
            HEADER_LEN_V2
        };
        while let Ok(end) = record_at(b, off, seed) {
            let mark = matches!(
                ciborium::from_reader(&b[off + 8..end]),
                Ok(WalRecord::Synced(_))
            );
            out.push((off, end, mark));
            off = end;
        }
        out
    }

    /// End of the last record of `b` that is not a sync mark.
    fn last_entry_end(b: &[u8]) -> usize {
        records(b).iter().rev().find(|r| !r.2).unwrap().1
    }

    /// Rewrites segment `seg` as written before sync marks: the old header,
    /// without the marks.
    fn as_v2(seg: &Path) {
        let b = std::fs::read(seg).unwrap();
        let mut old = [MAGIC_V2.as_slice(), &b[MAGIC.len()..MAGIC.len() + SALT_LEN]].concat();
        for (off, end, mark) in records(&b) {
            if !mark {
                old.extend(&b[off..end]);
            }
        }
        std::fs::write(seg, old).unwrap();
    }

    /// [`ten_entries`], in the format written now or (`v2`) before sync marks.
    fn ten_entries_as(v2: bool) -> (tempfile::TempDir, PathBuf) {
        let (dir, seg) = ten_entries();
        if v2 {
            as_v2(&seg);
        }
        (dir, seg)
    }

    #[test]
    fn torn_tail_is_discarded_but_damage_is_refused() {
        for v2 in [false, true] {
            let (dir, seg) = ten_entries_as(v2);
            // A torn final record: the last entry was never acknowledged.
            let bytes = std::fs::read(&seg).unwrap();
            cut(&seg, last_entry_end(&bytes) as u64 - 5);
            rt().block_on(async {
                let mut s = LogStore::open(dir.path()).unwrap();
                assert_eq!(indexes(&mut s).await, (1..=9).collect::<Vec<_>>());
            });
            // A flipped byte in a segment that is no longer the last (the
            // open above started one) is corruption, named with its file.
            let mut bytes = std::fs::read(&seg).unwrap();
            let mid = bytes.len() / 3;
            bytes[mid] ^= 0x40;
            std::fs::write(&seg, &bytes).unwrap();
            assert_refused_naming(dir.path(), &seg, "corrupt");
        }
    }

    #[test]
    fn damaged_length_before_valid_records_is_refused() {
        for v2 in [false, true] {
            let (dir, seg) = ten_entries_as(v2);
            let bytes = std::fs::read(&seg).unwrap();
            // Walk the frames to the fourth one and give it an impossible length.
            let mut off = if v2 { HEADER_LEN_V2 } else { HEADER_LEN };
            for _ in 0..3 {
                off += 8 + u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
            }
            let mut bad = bytes.clone();
            bad[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            std::fs::write(&seg, &bad).unwrap();
            let err = refusal(dir.path());
            let why = if v2 {
                "damaged record length"
            } else {
                "a later sync mark says were durable"
            };
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn_but_zeros_before_records_are_damage() {
        for v2 in [false, true] {
            let (dir, seg) = ten_entries_as(v2);
            let bytes = std::fs::read(&seg).unwrap();
            // The file grew but its last blocks were never written: zeros.
            let mut grown = bytes.clone();
            grown.extend(std::iter::repeat_n(0u8, 4096));
            std::fs::write(&seg, &grown).unwrap();
            rt().block_on(async {
                let mut s = LogStore::open(dir.path()).unwrap();
                assert_eq!(indexes(&mut s).await, (1..=10).collect::<Vec<_>>());
            });
            assert_eq!(std::fs::read(&seg).unwrap(), bytes, "the zeros are cut off");
            // Unwritten blocks are page-aligned, records are not: the zeros
            // may start inside the last record.
            let (dir2, seg2) = ten_entries_as(v2);
            let mut torn_mid = std::fs::read(&seg2).unwrap();
            torn_mid.truncate(last_entry_end(&torn_mid));
            let n = torn_mid.len();
            torn_mid[n - 3..].fill(0);
            torn_mid.extend(std::iter::repeat_n(0u8, 4096));
            std::fs::write(&seg2, &torn_mid).unwrap();
            rt().block_on(async {
                let mut s = LogStore::open(dir2.path()).unwrap();
                assert_eq!(indexes(&mut s).await, (1..=9).collect::<Vec<_>>());
            });
            // Zeros over a record that has records after it: refused.
            let (dir, seg) = ten_entries_as(v2);
            let mut holed = bytes.clone();
            let first = if v2 { HEADER_LEN_V2 } else { HEADER_LEN };
            let second = first
                + 8
                + u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
            holed[second..second + 8].fill(0);
            std::fs::write(&seg, &holed).unwrap();
            let err = refusal(dir.path());
            assert!(err.contains("zero-length record"), "{err}");
        }
    }

    /// A power loss may leave blocks of unsynced data unwritten (zeros)
    /// before written ones. No sync mark after such a gap covers it, so it
    /// starts a torn tail; a gap that a mark covers is damage to synced,
    /// acknowledged data.
    #[test]
    fn a_gap_in_unsynced_data_is_a_torn_tail_but_a_gap_a_sync_mark_covers_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            s.blocking_append((1..=5).map(|i| entry(i, 1)))
                .await
                .unwrap();
            s.blocking_append((6..=10).map(|i| entry(i, 1)))
                .await
                .unwrap();
        });
        let seg = newest_segment(dir.path());
        let bytes = std::fs::read(&seg).unwrap();
        let recs = records(&bytes);
        let entries: Vec<_> = recs.iter().filter(|r| !r.2).skip(1).collect(); // after `Committed`
        assert_eq!(entries.len(), 10);
        assert!(recs.last().unwrap().2, "the last sync is marked");
        let with_gap = |at: usize, marked: bool| {
            let mut b = bytes.clone();
            if !marked {
                b.truncate(last_entry_end(&bytes)); // the second sync never happened
            }
            let (off, end, _) = *entries[at - 1];
            b[off..end].fill(0);
            std::fs::write(&seg, &b).unwrap();
        };
        // Entry 7 was never written, 8..=10 were: none was acknowledged.
        with_gap(7, false);
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&mut s).await, (1..=6).collect::<Vec<_>>());
        });
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), entries[6].0 as u64);
        // A mark after the gap from a sync that ended before it (appends
        // written while that sync ran): still a torn tail.
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        with_gap(7, false);
        let seed = crc32c::crc32c(&bytes[MAGIC.len()..MAGIC.len() + SALT_LEN]);
        let early = frame(&WalRecord::Synced(entries[4].1 as u64), seed);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&early)
            .unwrap();
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&mut s).await, (1..=6).collect::<Vec<_>>());
        });
        // The same gap once the second sync is marked, or a gap in the
        // first synced append: acknowledged entries are damaged.
        for (at, marked) in [(7, true), (3, false)] {
            std::fs::remove_dir_all(dir.path()).unwrap();
            std::fs::create_dir(dir.path()).unwrap();
            with_gap(at, marked);
            let err = refusal(dir.path());
            assert!(err.contains("sync mark says were durable"), "{err}");
        }
        // A segment written before sync marks cannot tell: the gap is damage.
        std::fs::write(&seg, &bytes[..last_entry_end(&bytes)]).unwrap();
        as_v2(&seg);
        let mut old = std::fs::read(&seg).unwrap();
        let (off, end, _) = records(&old)[7]; // entry 7, after `Committed`
        old[off..end].fill(0);
        std::fs::write(&seg, &old).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("zero-length record"), "{err}");
    }

    #[test]
    fn a_value_shaped_like_a_record_does_not_turn_a_torn_tail_into_damage() {
        for v2 in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            // A client's value holding a well-formed record, checksummed as
            // it could be without the segment's salt, with more bytes after it.
            let mut value = vec![7u8; 64];
            value.extend(frame(&WalRecord::Committed(None), 0));
            value.extend([7u8; 256]);
            rt().block_on(async {
                let mut s = LogStore::open(dir.path()).unwrap();
                s.blocking_append((1..=9).map(|i| entry(i, 1)))
                    .await
                    .unwrap();
                let mut last = entry(10, 1);
                last.payload = EntryPayload::Normal(Command::Batch {
                    time: 10,
                    txs: vec![ByteBuf::from(value)],
                });
                s.blocking_append([last]).await.unwrap();
            });
            // The write of the last record was torn after the embedded record.
            let seg = newest_segment(dir.path());
            if v2 {
                as_v2(&seg);
            }
            let bytes = std::fs::read(&seg).unwrap();
            cut(&seg, last_entry_end(&bytes) as u64 - 128);
            rt().block_on(async {
                let mut s = LogStore::open(dir.path()).unwrap();
                assert_eq!(indexes(&mut s).await, (1..=9).collect::<Vec<_>>());
            });
        }
    }

    #[test]
    fn segments_written_before_the_salt_still_replay_and_their_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let legacy: Vec<u8> = (1..=3)
            .flat_map(|i| frame(&WalRecord::Entry(entry(i, 1)), 0))
            .collect();
        let seg = segment_path(dir.path(), 0);
        std::fs::write(&seg, &legacy).unwrap();
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
            s.blocking_append([entry(4, 1)]).await.unwrap();
        });
        rt().block_on(async {
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
        });
        let mut bad = legacy.clone();
        bad[20] ^= 1;
        std::fs::write(&seg, &bad).unwrap();
        assert_refused_naming(dir.path(), &seg, "checksum");
    }

    #[test]
    fn a_torn_segment_header_is_discarded_only_at_the_end_of_the_log() {
        let (dir, seg) = ten_entries();
        // A segment whose header was being written when the node stopped.
        let next = segment_path(dir.path(), 99);
        std::fs::write(&next, &MAGIC[..]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&next)
            .unwrap()
            .write_all(&[1, 2, 3])
            .unwrap();
        // It goes, and its number is used again: a later start, which would
        // find it empty before a newer segment, opens as well.
        for _ in 0..2 {
            rt().block_on(async {
                let mut s = LogStore::open(dir.path()).unwrap();
                assert_eq!(indexes(&mut s).await, (1..=10).collect::<Vec<_>>());
            });
            assert!(std::fs::metadata(&next).unwrap().len() >= HEADER_LEN as u64);
        }
        // Anywhere else a short header is damage.
        let good = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &MAGIC[..]).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("incomplete segment header"), "{err}");
        // A damaged header is never taken for a torn one, even in the last
        // segment: that would drop every entry in it.
        std::fs::remove_file(&next).unwrap();
        for at in [0, MAGIC.len()] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&seg, &bad).unwrap();
            let err = refusal(dir.path());
            assert!(
                err.contains("damaged segment header") || err.contains("checksum mismatch"),
                "byte {at}: {err}"
            );
        }
    }
}
