//! The ledger's permanent, append-only segment files.
//!
//! Every ledger leaf is stored as one record (opaque bytes, at most 16 MiB)
//! in a directory of *segment files*. Auditors copy these files, so the
//! format is deliberately simple and is specified completely here: a reader
//! written from this description alone must accept every file this module
//! writes and reject every damaged one.
//!
//! # Directory
//!
//! The directory holds files named `ledger-{first_index:020}.seg`, where
//! `first_index` is the index of the segment's first record written as
//! exactly 20 decimal digits, zero padded (for example
//! `ledger-00000000000000000000.seg`, `ledger-00000000000000004711.seg`).
//! Other files are ignored. Ordered by `first_index`, the segments cover the
//! record indexes `0, 1, 2, ...` without gaps or overlaps: the first segment
//! starts at index 0 and every further segment starts exactly at the index
//! following the last record of the one before it.
//!
//! # Segment file layout
//!
//! All integers are unsigned and **little endian**. Every checksum is
//! **CRC-32C (Castagnoli**, reflected polynomial `0x82F63B78`, initial value
//! `0xFFFFFFFF`, final XOR `0xFFFFFFFF`; the checksum of the ASCII bytes
//! `123456789` is `0xE3069283`), stored as a `u32`.
//!
//! A segment is a header, zero or more records and, if the segment is
//! *sealed*, a trailer. Nothing else may follow the trailer.
//!
//! ```text
//! header (24 bytes)
//!   offset  0  8 bytes  magic, ASCII "CMTYSEG1"
//!   offset  8  u32      format version, 1
//!   offset 12  u64      first_index: index of the segment's first record
//!                       (equal to the number in the file name)
//!   offset 20  u32      CRC-32C of header bytes 0..20
//!
//! record (8 + length bytes), repeated; record i of the segment has
//! index first_index + i
//!   offset  0  u32      length of the payload in bytes, at most 16 MiB
//!                       (16_777_216)
//!   offset  4  u32      CRC-32C of (index as u64 LE, 8 bytes) followed by
//!                       the payload bytes
//!   offset  8  length   payload
//!
//! trailer (24 bytes), only in sealed segments
//!   offset  0  8 bytes  magic, ASCII "CMTYEND1"
//!   offset  8  u64      number of records in the segment
//!   offset 16  u32      segment checksum: CRC-32C of the concatenation of
//!                       every record's stored CRC field (4 bytes, LE), in
//!                       record order (the CRC-32C of no bytes, 0, when the
//!                       segment has no records)
//!   offset 20  u32      CRC-32C of trailer bytes 0..20
//! ```
//!
//! Because the record checksum covers the record's index, a record copied or
//! moved to another position fails verification.
//!
//! A reader tells a trailer from a record by its first 8 bytes: the trailer
//! magic `CMTYEND1` read as a record length (`"CMTY"` as u32 LE,
//! `0x59544D43`) exceeds the 16 MiB maximum, so it can never start a valid
//! record.
//!
//! # Sealing and durability
//!
//! A segment is sealed (its trailer written) when a record is about to be
//! appended and the segment already holds at least one record and has
//! reached the roll size (`roll_bytes`, default 64 MiB, counting header and
//! records); the record then starts a new segment. So a segment exceeds the
//! roll size by less than one record plus the trailer. Every segment but the
//! last one is sealed; the last one may be sealed or not. Before the next
//! segment file is created, the sealed segment is flushed and `fdatasync`ed
//! and the directory is `fsync`ed, so the existence of a segment file implies
//! that all earlier segments are complete on disk.
//!
//! Appends are buffered and not synced; [`LedgerFiles::sync`] makes them
//! durable. After a crash the end of the last segment may therefore hold a
//! torn record, a torn trailer, garbage or (for a segment created just before
//! the crash) a torn header. [`LedgerFiles::open`] is told by its caller how
//! many records had been made durable (`durable_len`): damage that lies
//! entirely after those records at the end of the last segment is cut off and
//! reported; any other damage, a gap, an overlap, an unsealed segment that is
//! not the last one, or fewer intact records than `durable_len` is an error,
//! and the ledger refuses to open.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Magic bytes that start every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CMTYSEG1";
/// Magic bytes that start the trailer of a sealed segment.
pub const TRAILER_MAGIC: [u8; 8] = *b"CMTYEND1";
/// The segment format version written and accepted by this module.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub const HEADER_LEN: u64 = 24;
/// Size of the segment trailer in bytes.
pub const TRAILER_LEN: u64 = 24;
/// Size of a record's length + checksum prefix in bytes.
pub const RECORD_HEADER_LEN: u64 = 8;
/// Largest payload a record may carry (16 MiB).
pub const MAX_RECORD_LEN: u32 = 16 * 1024 * 1024;
/// Default roll size of a segment (64 MiB).
pub const DEFAULT_ROLL_BYTES: u64 = 64 * 1024 * 1024;

/// Capacity of the append buffer.
const WRITE_BUFFER: usize = 64 * 1024;
/// Capacity of the read buffer used to scan segments while opening.
const SCAN_BUFFER: usize = 256 * 1024;

/// Boxed error returned by an [`LedgerFiles::open`] visitor.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the segment files.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// An operating-system I/O error on a ledger file or directory.
    #[error("I/O error on ledger path {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A ledger file's contents are damaged or inconsistent.
    #[error(
        "ledger file {} is corrupt at byte {offset}{}: {reason}",
        .path.display(),
        record_suffix(.index)
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset within the file where the damage was found.
        offset: u64,
        /// The record concerned, if the damage is in or at a record.
        index: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// Fewer intact records exist than the caller knows were made durable.
    #[error(
        "ledger directory {} holds only {found} intact records, but {durable_len} \
         had been made durable: acknowledged records are missing",
        .dir.display()
    )]
    MissingRecords {
        dir: PathBuf,
        durable_len: u64,
        found: u64,
    },
    /// The visitor passed to [`LedgerFiles::open`] rejected a record.
    #[error("ledger record {index} was rejected while opening: {source}")]
    Visit {
        index: u64,
        #[source]
        source: BoxError,
    },
    /// A payload larger than [`MAX_RECORD_LEN`] was appended.
    #[error("ledger record payload of {len} bytes exceeds the maximum of {MAX_RECORD_LEN} bytes")]
    PayloadTooLarge { len: usize },
    /// A record index at or beyond the ledger's length was requested.
    #[error("ledger record {index} does not exist (the ledger holds {len} records)")]
    OutOfRange { index: u64, len: u64 },
    /// An earlier write or sync failed; the in-memory state can no longer be
    /// trusted to match the files.
    #[error(
        "an earlier write to the ledger files in {} failed; the ledger must be reopened",
        .dir.display()
    )]
    Poisoned { dir: PathBuf },
}

fn record_suffix(index: &Option<u64>) -> String {
    match index {
        Some(i) => format!(" (record {i})"),
        None => String::new(),
    }
}

/// What [`LedgerFiles::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Number of intact records (the ledger's length after opening).
    pub records: u64,
    /// Bytes of damaged, unsynced tail that were cut off the last segment
    /// (including a last segment file that was removed entirely because its
    /// header was torn).
    pub discarded_tail_bytes: u64,
}

/// One segment file as known in memory.
#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Read handle (positional reads only) of the last segment; older ones
    /// are opened as read (see [`LedgerFiles::sealed`]).
    file: Option<File>,
    /// Byte offset of every record in the file.
    offsets: Vec<u64>,
    /// Byte offset just past the last record (where the trailer starts if
    /// sealed, or where the next record goes if not).
    data_end: u64,
    sealed: bool,
    /// Running segment checksum over the record CRC fields.
    seg_crc: u32,
}

impl Segment {
    fn count(&self) -> u64 {
        self.offsets.len() as u64
    }
}

/// The ledger's segment files: append, read, sync and truncate records.
#[derive(Debug)]
pub struct LedgerFiles {
    dir: PathBuf,
    roll_bytes: u64,
    segments: Vec<Segment>,
    /// Buffered writer on the last segment; present exactly when the last
    /// segment exists and is not sealed.
    writer: Option<BufWriter<File>>,
    len: u64,
    /// A directory entry was created since the directory was last synced.
    dir_dirty: bool,
    /// A write failed; all further mutation is refused.
    poisoned: bool,
    /// Read handles of older segments, most recently used first, at most
    /// [`OPEN_SEALED`]: the ledger grows for ever, and the node shares its
    /// open-file limit with client connections.
    sealed: Mutex<Vec<(u64, Arc<File>)>>,
}

/// Read handles of sealed segments kept open at most.
const OPEN_SEALED: usize = 16;

/// File name of the segment whose first record has index `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("ledger-{first_index:020}.seg")
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ledger-")?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header_bytes(first_index: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn trailer_bytes(count: u64, seg_crc: u32) -> [u8; TRAILER_LEN as usize] {
    let mut t = [0u8; TRAILER_LEN as usize];
    t[0..8].copy_from_slice(&TRAILER_MAGIC);
    t[8..16].copy_from_slice(&count.to_le_bytes());
    t[16..20].copy_from_slice(&seg_crc.to_le_bytes());
    let crc = crc32c::crc32c(&t[0..20]);
    t[20..24].copy_from_slice(&crc.to_le_bytes());
    t
}

/// CRC-32C of the record's index (u64 LE) followed by its payload.
fn record_crc(index: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_le_bytes()), payload)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(
    path: &Path,
    offset: u64,
    index: Option<u64>,
    reason: impl Into<String>,
) -> SegmentError {
    SegmentError::Corrupt {
        path: path.to_path_buf(),
        offset,
        index,
        reason: reason.into(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Lists the segment files of `dir`, sorted by first index.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SegmentError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_segment_file_name(name) {
            Some(first) => found.push((first, entry.path())),
            None if name.starts_with("ledger-") && name.ends_with(".seg") => {
                tracing::warn!(file = %entry.path().display(), "ignoring malformed ledger segment file name");
            }
            None => {}
        }
    }
    found.sort_by_key(|(first, _)| *first);
    Ok(found)
}

fn open_writer(seg: &Segment) -> Result<BufWriter<File>, SegmentError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .map_err(io_err(&seg.path))?;
    file.seek(SeekFrom::Start(seg.data_end))
        .map_err(io_err(&seg.path))?;
    Ok(BufWriter::with_capacity(WRITE_BUFFER, file))
}

/// Result of scanning one segment file while opening.
enum Scanned {
    /// The segment is usable; `discarded` bytes of damaged tail were cut off.
    Segment { seg: Segment, discarded: u64 },
    /// The (last) file's header was torn and it held no durable records; the
    /// whole file of `bytes` bytes is to be removed.
    Discard { bytes: u64 },
}

/// Reads and verifies one segment file. Damage at record index `i` (or in
/// the header, for `i = first`) is tolerated, by cutting the file there, only
/// if `is_last && i >= durable_len`.
fn scan_segment<E: Into<BoxError>>(
    path: &Path,
    first: u64,
    is_last: bool,
    durable_len: u64,
    visit: &mut impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<Scanned, SegmentError> {
    let tail_ok = |index: u64| is_last && index >= durable_len;
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();

    // Header.
    let mut header = [0u8; HEADER_LEN as usize];
    let header_problem = if file_len < HEADER_LEN {
        Some(format!(
            "file is {file_len} bytes long, shorter than the {HEADER_LEN}-byte header"
        ))
    } else {
        file.read_exact_at(&mut header, 0).map_err(io_err(path))?;
        if header[0..8] != SEGMENT_MAGIC {
            Some("bad segment magic (expected \"CMTYSEG1\")".to_string())
        } else if crc32c::crc32c(&header[0..20]) != le_u32(&header[20..24]) {
            Some("header checksum mismatch".to_string())
        } else {
            None
        }
    };
    if let Some(reason) = header_problem {
        if tail_ok(first) {
            tracing::warn!(
                file = %path.display(),
                %reason,
                "removing last ledger segment with a torn header (holds no durable records)"
            );
            return Ok(Scanned::Discard { bytes: file_len });
        }
        return Err(corrupt(path, 0, None, reason));
    }
    let version = le_u32(&header[8..12]);
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            8,
            None,
            format!("unsupported format version {version} (expected {FORMAT_VERSION})"),
        ));
    }
    let header_first = le_u64(&header[12..20]);
    if header_first != first {
        return Err(corrupt(
            path,
            12,
            None,
            format!(
                "header says the first record is {header_first}, but the file name says {first}"
            ),
        ));
    }

    // Records and trailer.
    let mut reader = BufReader::with_capacity(SCAN_BUFFER, file.try_clone().map_err(io_err(path))?);
    reader
        .seek(SeekFrom::Start(HEADER_LEN))
        .map_err(io_err(path))?;
    let mut off = HEADER_LEN;
    let mut index = first;
    let mut offsets = Vec::new();
    let mut seg_crc = 0u32;
    let mut sealed = false;
    let mut payload = Vec::new();
    // (offset, reported record index, reason) of damage found.
    let mut damage: Option<(u64, Option<u64>, String)> = None;
    while off < file_len {
        let remaining = file_len - off;
        if remaining < RECORD_HEADER_LEN {
            damage = Some((
                off,
                Some(index),
                format!("incomplete record header ({remaining} bytes at the end of the file)"),
            ));
            break;
        }
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut head).map_err(io_err(path))?;
        if head == TRAILER_MAGIC {
            if remaining < TRAILER_LEN {
                damage = Some((
                    off,
                    None,
                    format!("incomplete trailer ({remaining} bytes at the end of the file)"),
                ));
                break;
            }
            let mut trailer = [0u8; TRAILER_LEN as usize];
            trailer[0..8].copy_from_slice(&head);
            reader.read_exact(&mut trailer[8..]).map_err(io_err(path))?;
            if crc32c::crc32c(&trailer[0..20]) != le_u32(&trailer[20..24]) {
                damage = Some((off, None, "trailer checksum mismatch".to_string()));
                break;
            }
            let count = le_u64(&trailer[8..16]);
            if count != offsets.len() as u64 {
                return Err(corrupt(
                    path,
                    off,
                    None,
                    format!(
                        "trailer says the segment holds {count} records, but it holds {}",
                        offsets.len()
                    ),
                ));
            }
            if le_u32(&trailer[16..20]) != seg_crc {
                return Err(corrupt(
                    path,
                    off,
                    None,
                    "segment checksum mismatch in trailer",
                ));
            }
            if remaining > TRAILER_LEN {
                return Err(corrupt(
                    path,
                    off + TRAILER_LEN,
                    None,
                    format!(
                        "{} unexpected bytes after the trailer",
                        remaining - TRAILER_LEN
                    ),
                ));
            }
            sealed = true;
            break;
        }
        let len = le_u32(&head[0..4]);
        let crc = le_u32(&head[4..8]);
        if len > MAX_RECORD_LEN {
            damage = Some((
                off,
                Some(index),
                format!(
                    "record length {len} exceeds the maximum of {MAX_RECORD_LEN} \
                     (damaged record header or trailer)"
                ),
            ));
            break;
        }
        let available = remaining - RECORD_HEADER_LEN;
        if u64::from(len) > available {
            damage = Some((
                off,
                Some(index),
                format!(
                    "record of {len} bytes extends past the end of the file \
                     ({available} bytes left)"
                ),
            ));
            break;
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err(path))?;
        if record_crc(index, &payload) != crc {
            damage = Some((off, Some(index), "checksum mismatch".to_string()));
            break;
        }
        visit(index, &payload).map_err(|e| SegmentError::Visit {
            index,
            source: e.into(),
        })?;
        offsets.push(off);
        seg_crc = crc32c::crc32c_append(seg_crc, &crc.to_le_bytes());
        off += RECORD_HEADER_LEN + u64::from(len);
        index += 1;
    }
    drop(reader);

    let mut discarded = 0;
    if let Some((at, reported, reason)) = damage {
        if !tail_ok(index) {
            return Err(corrupt(path, at, reported, reason));
        }
        discarded = file_len - at;
        tracing::warn!(
            file = %path.display(),
            offset = at,
            record = index,
            bytes = discarded,
            %reason,
            "cutting off damaged unsynced tail of the ledger"
        );
        let w = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        w.set_len(at).map_err(io_err(path))?;
        w.sync_data().map_err(io_err(path))?;
    }
    if !sealed && !is_last {
        return Err(corrupt(
            path,
            off,
            None,
            "segment is not sealed (no trailer) but a later segment exists",
        ));
    }
    offsets.shrink_to_fit();
    Ok(Scanned::Segment {
        seg: Segment {
            first_index: first,
            path: path.to_path_buf(),
            file: Some(file),
            offsets,
            data_end: off,
            sealed,
            seg_crc,
        },
        discarded,
    })
}

impl LedgerFiles {
    /// Opens the ledger in `dir` (creating the directory if needed) and
    /// verifies every header, record checksum and trailer, calling
    /// `visit(index, payload)` for each intact record in order.
    ///
    /// `durable_len` is the number of records the caller knows were made
    /// durable earlier. Damage in any of those records, in any sealed
    /// segment, in any header or trailer, a gap or overlap between segments,
    /// a missing segment, or fewer than `durable_len` intact records is an
    /// error. Damage lying after the first `durable_len` records at the very
    /// end of the last segment (an unsynced torn or garbage tail) is cut off
    /// and reported in [`OpenReport::discarded_tail_bytes`].
    ///
    /// `roll_bytes` is the size at which a segment is sealed (see the module
    /// documentation); [`DEFAULT_ROLL_BYTES`] is a sensible value.
    ///
    /// An error returned by `visit` aborts opening as
    /// [`SegmentError::Visit`].
    pub fn open<E>(
        dir: &Path,
        durable_len: u64,
        roll_bytes: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(Self, OpenReport), SegmentError>
    where
        E: Into<BoxError>,
    {
        crate::dirs::create_dir_all_synced(dir).map_err(io_err(dir))?;
        let files = list_segments(dir)?;
        let count = files.len();
        let mut segments: Vec<Segment> = Vec::with_capacity(count);
        let mut next_index = 0u64;
        let mut discarded_tail_bytes = 0u64;
        for (i, (first, path)) in files.into_iter().enumerate() {
            let is_last = i + 1 == count;
            if first != next_index {
                let reason = if first > next_index {
                    format!(
                        "segment starts at record {first}, but the segments before it end at \
                         record {next_index}: records {next_index}..{first} are missing"
                    )
                } else {
                    format!(
                        "segment starts at record {first}, overlapping the segments before it, \
                         which end at record {next_index}"
                    )
                };
                return Err(corrupt(&path, 0, Some(first), reason));
            }
            match scan_segment(&path, first, is_last, durable_len, &mut visit)? {
                Scanned::Segment { seg, discarded } => {
                    discarded_tail_bytes += discarded;
                    next_index = seg.first_index + seg.count();
                    segments.push(seg);
                }
                Scanned::Discard { bytes } => {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    sync_dir(dir)?;
                    discarded_tail_bytes += bytes;
                }
            }
        }
        let older = segments.len().saturating_sub(1);
        for s in &mut segments[..older] {
            s.file = None;
        }
        if next_index < durable_len {
            return Err(SegmentError::MissingRecords {
                dir: dir.to_path_buf(),
                durable_len,
                found: next_index,
            });
        }
        let writer = match segments.last() {
            Some(last) if !last.sealed => Some(open_writer(last)?),
            _ => None,
        };
        let report = OpenReport {
            records: next_index,
            discarded_tail_bytes,
        };
        tracing::debug!(
            dir = %dir.display(),
            records = next_index,
            segments = segments.len(),
            discarded_tail_bytes,
            "opened ledger segment files"
        );
        Ok((
            LedgerFiles {
                dir: dir.to_path_buf(),
                roll_bytes,
                segments,
                writer,
                len: next_index,
                dir_dirty: false,
                poisoned: false,
                sealed: Mutex::default(),
            },
            report,
        ))
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of records in the ledger (appended ones included, synced or
    /// not).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the ledger holds no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends a record and returns its index. The write is buffered and not
    /// synced (see [`sync`](Self::sync)), except that rolling over to a new
    /// segment flushes and syncs the segment being sealed.
    ///
    /// After an I/O error the ledger is poisoned: further appends, syncs and
    /// truncations fail until it is reopened.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SegmentError> {
        if payload.len() > MAX_RECORD_LEN as usize {
            return Err(SegmentError::PayloadTooLarge { len: payload.len() });
        }
        self.guarded(|this| this.append_inner(payload))
    }

    fn append_inner(&mut self, payload: &[u8]) -> Result<u64, SegmentError> {
        let need_new = match self.segments.last() {
            None => true,
            Some(s) => s.sealed || (!s.offsets.is_empty() && s.data_end >= self.roll_bytes),
        };
        if need_new {
            if self.writer.is_some() {
                self.seal_active()?;
            }
            self.create_segment(self.len)?;
        }
        let index = self.len;
        let crc = record_crc(index, payload);
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.last_mut()) else {
            unreachable!("an unsealed last segment has a writer");
        };
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        head[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        w.write_all(&head)
            .and_then(|()| w.write_all(payload))
            .map_err(io_err(&seg.path))?;
        seg.offsets.push(seg.data_end);
        seg.data_end += RECORD_HEADER_LEN + payload.len() as u64;
        seg.seg_crc = crc32c::crc32c_append(seg.seg_crc, &crc.to_le_bytes());
        self.len += 1;
        Ok(index)
    }

    /// Creates a new, empty, unsealed last segment starting at `first`.
    fn create_segment(&mut self, first: u64) -> Result<(), SegmentError> {
        let path = self.dir.join(segment_file_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(&path))?;
        self.dir_dirty = true;
        let read = file.try_clone().map_err(io_err(&path))?;
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
        w.write_all(&header_bytes(first)).map_err(io_err(&path))?;
        if let Some(prev) = self.segments.last_mut() {
            prev.file = None;
        }
        self.segments.push(Segment {
            first_index: first,
            path,
            file: Some(read),
            offsets: Vec::new(),
            data_end: HEADER_LEN,
            sealed: false,
            seg_crc: 0,
        });
        self.writer = Some(w);
        Ok(())
    }

    /// Writes the trailer of the last segment, makes it durable (and the
    /// directory, if it changed) and drops the writer.
    fn seal_active(&mut self) -> Result<(), SegmentError> {
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.last_mut()) else {
            unreachable!("sealing requires an unsealed last segment");
        };
        let trailer = trailer_bytes(seg.count(), seg.seg_crc);
        w.write_all(&trailer)
            .and_then(|()| w.flush())
            .and_then(|()| w.get_ref().sync_data())
            .map_err(io_err(&seg.path))?;
        seg.sealed = true;
        seg.offsets.shrink_to_fit();
        self.writer = None;
        if self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Flushes buffered appends and `fdatasync`s the current segment, and
    /// `fsync`s the directory if a segment file was created since the last
    /// sync. Afterwards every record appended so far is durable.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        if let Some((file, path)) = self.flush_for_sync()? {
            self.guarded(|_| file.sync_data().map_err(io_err(&path)))?;
        }
        Ok(())
    }

    /// Flushes buffered appends to the operating system (making a new
    /// segment's directory entry durable too) and returns the active
    /// segment's file and path. Once the caller has `fdatasync`ed that file,
    /// outside the ledger's lock, every record appended so far is durable.
    pub fn flush_for_sync(&mut self) -> Result<Option<(File, PathBuf)>, SegmentError> {
        self.guarded(|this| {
            if this.dir_dirty {
                sync_dir(&this.dir)?;
                this.dir_dirty = false;
            }
            let (Some(w), Some(seg)) = (this.writer.as_mut(), this.segments.last()) else {
                return Ok(None);
            };
            w.flush().map_err(io_err(&seg.path))?;
            let file = this.with_file(this.segments.len() - 1, File::try_clone)?;
            Ok(Some((file, seg.path.clone())))
        })
    }

    /// Reads record `index`, verifying its checksum. Sees appended records
    /// whether or not they were flushed.
    pub fn read(&self, index: u64) -> Result<Vec<u8>, SegmentError> {
        if index >= self.len {
            return Err(SegmentError::OutOfRange {
                index,
                len: self.len,
            });
        }
        // The first segment starts at 0 and index < len, so some segment
        // starts at or before `index`.
        let si = self
            .segments
            .partition_point(|s| s.first_index <= index)
            .saturating_sub(1);
        let seg = &self.segments[si];
        let k = (index - seg.first_index) as usize;
        let start = seg.offsets[k];
        let end = seg.offsets.get(k + 1).copied().unwrap_or(seg.data_end);
        let mut buf = self.read_range(si, start, end)?;
        let len = u64::from(le_u32(&buf[0..4]));
        if len != end - start - RECORD_HEADER_LEN {
            return Err(corrupt(
                &seg.path,
                start,
                Some(index),
                format!(
                    "record length field {len} does not match the length {} found when opening",
                    end - start - RECORD_HEADER_LEN
                ),
            ));
        }
        let crc = le_u32(&buf[4..8]);
        if record_crc(index, &buf[RECORD_HEADER_LEN as usize..]) != crc {
            return Err(corrupt(&seg.path, start, Some(index), "checksum mismatch"));
        }
        buf.drain(..RECORD_HEADER_LEN as usize);
        Ok(buf)
    }

    /// Reads bytes `start..end` of segment `si`, taking the part not yet
    /// flushed from the write buffer.
    fn read_range(&self, si: usize, start: u64, end: u64) -> Result<Vec<u8>, SegmentError> {
        let seg = &self.segments[si];
        let is_active = si + 1 == self.segments.len() && self.writer.is_some();
        let (flushed_end, buffered): (u64, &[u8]) = match &self.writer {
            Some(w) if is_active => {
                if self.poisoned {
                    return Err(SegmentError::Poisoned {
                        dir: self.dir.clone(),
                    });
                }
                let b = w.buffer();
                (seg.data_end - b.len() as u64, b)
            }
            _ => (end, &[]),
        };
        let mut out = vec![0u8; (end - start) as usize];
        let split = end.min(flushed_end).max(start);
        let from_file = (split - start) as usize;
        if from_file > 0 {
            self.with_file(si, |f| f.read_exact_at(&mut out[..from_file], start))?;
        }
        if end > split {
            let from = (split - flushed_end) as usize;
            let n = (end - split) as usize;
            out[from_file..].copy_from_slice(&buffered[from..from + n]);
        }
        Ok(out)
    }

    /// Runs `f` on a read handle of segment `si`.
    fn with_file<T>(
        &self,
        si: usize,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, SegmentError> {
        let seg = &self.segments[si];
        if let Some(file) = &seg.file {
            return f(file).map_err(io_err(&seg.path));
        }
        let file = {
            let mut open = self.sealed.lock().unwrap_or_else(|e| e.into_inner());
            let file = match open.iter().position(|(first, _)| *first == seg.first_index) {
                Some(i) => open.remove(i).1,
                None => Arc::new(File::open(&seg.path).map_err(io_err(&seg.path))?),
            };
            open.insert(0, (seg.first_index, file.clone()));
            open.truncate(OPEN_SEALED);
            file
        };
        f(&file).map_err(io_err(&seg.path))
    }

    /// Drops every record with index `>= len`, removing whole later segment
    /// files and cutting the segment that contains index `len` (which becomes
    /// unsealed). The result is durable when this returns. `len` greater than
    /// the current length is an error.
    pub fn truncate(&mut self, len: u64) -> Result<(), SegmentError> {
        if len > self.len {
            return Err(SegmentError::OutOfRange {
                index: len,
                len: self.len,
            });
        }
        if len == self.len {
            return Ok(());
        }
        self.guarded(|this| this.truncate_inner(len))
    }

    fn truncate_inner(&mut self, len: u64) -> Result<(), SegmentError> {
        if let Some(mut w) = self.writer.take() {
            let path = &self.segments.last().expect("writer implies segment").path;
            w.flush().map_err(io_err(path))?;
        }
        // Remove whole segments from the end so that the remaining files
        // always form a contiguous prefix.
        // A handle kept open could outlive its file, and a file of the same
        // name made later would be read through it.
        self.sealed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.first_index >= len) {
            let seg = self.segments.pop().expect("checked non-empty");
            drop(seg.file);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed = true;
        }
        if removed || self.dir_dirty {
            sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        if let Some(seg) = self.segments.last_mut() {
            if seg.file.is_none() {
                seg.file = Some(File::open(&seg.path).map_err(io_err(&seg.path))?);
            }
            let keep = len - seg.first_index;
            if keep < seg.count() {
                let new_end = seg.offsets[keep as usize];
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                f.set_len(new_end)
                    .and_then(|()| f.sync_data())
                    .map_err(io_err(&seg.path))?;
                seg.offsets.truncate(keep as usize);
                seg.data_end = new_end;
                seg.sealed = false;
                let mut acc = 0u32;
                let file = seg.file.as_ref().expect("opened above");
                for &o in &seg.offsets {
                    let mut crc = [0u8; 4];
                    file.read_exact_at(&mut crc, o + 4)
                        .map_err(io_err(&seg.path))?;
                    acc = crc32c::crc32c_append(acc, &crc);
                }
                seg.seg_crc = acc;
            }
            if !seg.sealed {
                self.writer = Some(open_writer(seg)?);
            }
        }
        self.len = len;
        Ok(())
    }

    /// Refuses every further mutation, after a failure outside (a sync of
    /// the file [`LedgerFiles::flush_for_sync`] handed out).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// Runs a mutation, refusing it if the ledger is poisoned and poisoning
    /// it if the mutation fails.
    fn guarded<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, SegmentError>,
    ) -> Result<T, SegmentError> {
        if self.poisoned {
            return Err(SegmentError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        let result = f(self);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn payload(i: u64) -> Vec<u8> {
        format!("record {i}: ")
            .into_bytes()
            .into_iter()
            .chain((0..(i * 7 % 61)).map(|j| (i + j) as u8))
            .collect()
    }

    fn open_collect(
        dir: &Path,
        durable_len: u64,
        roll: u64,
    ) -> Result<(LedgerFiles, OpenReport, Vec<Vec<u8>>), SegmentError> {
        let mut seen = Vec::new();
        let mut expect = 0u64;
        let (l, r) = LedgerFiles::open(dir, durable_len, roll, |i, p| {
            assert_eq!(i, expect, "records are visited in order");
            expect += 1;
            seen.push(p.to_vec());
            Ok::<(), Infallible>(())
        })?;
        Ok((l, r, seen))
    }

    /// Creates a ledger with `n` records (`payload(i)`), synced and closed.
    fn build(dir: &Path, n: u64, roll: u64) -> Vec<Vec<u8>> {
        let (mut l, _, _) = open_collect(dir, 0, roll).unwrap();
        let all: Vec<_> = (0..n).map(payload).collect();
        for (i, p) in all.iter().enumerate() {
            assert_eq!(l.append(p).unwrap(), i as u64);
        }
        l.sync().unwrap();
        all
    }

    fn seg_path(dir: &Path, first: u64) -> PathBuf {
        dir.join(segment_file_name(first))
    }

    /// (first_index, path) of the segment files, in order.
    fn seg_files(dir: &Path) -> Vec<(u64, PathBuf)> {
        list_segments(dir).unwrap()
    }

    fn flip_byte(path: &Path, at: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at as usize] ^= 0x40;
        fs::write(path, bytes).unwrap();
    }

    /// A reader written from the module documentation only, independent of
    /// the implementation above.
    fn independent_read(dir: &Path) -> Vec<Vec<u8>> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("ledger-") && n.ends_with(".seg"))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for (si, name) in names.iter().enumerate() {
            let b = fs::read(dir.join(name)).unwrap();
            let first: u64 = name[7..27].parse().unwrap();
            assert_eq!(first, out.len() as u64);
            assert_eq!(&b[0..8], b"CMTYSEG1");
            assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), 1);
            assert_eq!(u64::from_le_bytes(b[12..20].try_into().unwrap()), first);
            assert_eq!(
                u32::from_le_bytes(b[20..24].try_into().unwrap()),
                crc32c::crc32c(&b[0..20])
            );
            let mut p = 24;
            let mut crcs = Vec::new();
            let mut sealed = false;
            while p < b.len() {
                if &b[p..p + 8] == b"CMTYEND1" {
                    let t = &b[p..p + 24];
                    assert_eq!(p + 24, b.len());
                    assert_eq!(
                        u64::from_le_bytes(t[8..16].try_into().unwrap()),
                        (out.len() as u64) - first
                    );
                    assert_eq!(
                        u32::from_le_bytes(t[16..20].try_into().unwrap()),
                        crc32c::crc32c(&crcs)
                    );
                    assert_eq!(
                        u32::from_le_bytes(t[20..24].try_into().unwrap()),
                        crc32c::crc32c(&t[0..20])
                    );
                    sealed = true;
                    break;
                }
                let len = u32::from_le_bytes(b[p..p + 4].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(b[p + 4..p + 8].try_into().unwrap());
                let body = &b[p + 8..p + 8 + len];
                let mut covered = (out.len() as u64).to_le_bytes().to_vec();
                covered.extend_from_slice(body);
                assert_eq!(crc, crc32c::crc32c(&covered));
                crcs.extend_from_slice(&b[p + 4..p + 8]);
                out.push(body.to_vec());
                p += 8 + len;
            }
            assert!(
                sealed || si + 1 == names.len(),
                "only the last segment may be unsealed"
            );
        }
        out
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn corrupt_display_names_file_offset_and_record() {
        let e = corrupt(
            Path::new("/x/ledger-00000000000000000000.seg"),
            4096,
            Some(17),
            "checksum mismatch",
        );
        assert_eq!(
            e.to_string(),
            "ledger file /x/ledger-00000000000000000000.seg is corrupt at byte 4096 (record 17): checksum mismatch"
        );
        let e = corrupt(Path::new("/x/a.seg"), 0, None, "bad");
        assert_eq!(
            e.to_string(),
            "ledger file /x/a.seg is corrupt at byte 0: bad"
        );
    }

    #[test]
    fn round_trip_across_rolls_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        let (mut l, report, seen) = open_collect(&dir, 0, 200).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 0,
                discarded_tail_bytes: 0
            }
        );
        assert!(seen.is_empty() && l.is_empty());
        let all: Vec<_> = (0..50).map(payload).collect();
        for (i, p) in all.iter().enumerate() {
            assert_eq!(l.append(p).unwrap(), i as u64);
            // Immediately readable, flushed or not.
            assert_eq!(&l.read(i as u64).unwrap(), p);
        }
        assert_eq!(l.len(), 50);
        assert!(
            l.segment_count() >= 4,
            "small roll size gives several segments"
        );
        for (i, p) in all.iter().enumerate() {
            assert_eq!(&l.read(i as u64).unwrap(), p);
        }
        assert!(matches!(
            l.read(50),
            Err(SegmentError::OutOfRange { index: 50, len: 50 })
        ));
        l.sync().unwrap();
        let segs = l.segment_count();
        drop(l);

        assert!(seg_path(&dir, 0).exists());
        let files = seg_files(&dir);
        assert_eq!(files.len(), segs);
        for (_, path) in &files[..files.len() - 1] {
            let len = fs::metadata(path).unwrap().len();
            assert!(len >= 200, "sealed segments reached the roll size");
        }
        assert_eq!(independent_read(&dir), all);

        let (l, report, seen) = open_collect(&dir, 50, 200).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 50,
                discarded_tail_bytes: 0
            }
        );
        assert_eq!(seen, all);
        assert_eq!(l.len(), 50);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(&l.read(i as u64).unwrap(), p);
        }
    }

    /// Files of `dir` this process holds open.
    fn open_in(dir: &Path) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|t| t.starts_with(dir))
            .count()
    }

    /// A ledger grows for ever; the files it holds open must not.
    #[test]
    fn open_files_stay_bounded_as_segments_accumulate() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ledger");
        let (mut l, _, _) = open_collect(&dir, 0, 100).unwrap();
        let all: Vec<_> = (0..200).map(payload).collect();
        for p in &all {
            l.append(p).unwrap();
        }
        l.sync().unwrap();
        assert!(l.segment_count() > 3 * OPEN_SEALED, "{}", l.segment_count());
        for round in 0..2 {
            for (i, p) in all.iter().enumerate() {
                assert_eq!(&l.read(i as u64).unwrap(), p, "round {round}");
            }
            assert!(open_in(&dir) <= OPEN_SEALED + 2, "{} open", open_in(&dir));
        }
        drop(l);
        let (l, _, seen) = open_collect(&dir, 200, 100).unwrap();
        assert_eq!(seen, all);
        assert!(open_in(&dir) <= 2, "{} open after opening", open_in(&dir));
        // Cut back into a sealed segment: it is the last one, and written to.
        let mut l = l;
        l.truncate(30).unwrap();
        l.append(b"after the cut").unwrap();
        assert_eq!(l.read(30).unwrap(), b"after the cut");
        for (i, p) in all.iter().take(30).enumerate() {
            assert_eq!(&l.read(i as u64).unwrap(), p);
        }
    }

    #[test]
    fn reads_straddle_write_buffer_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut l, _, _) = open_collect(tmp.path(), 0, DEFAULT_ROLL_BYTES).unwrap();
        let all: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 30_000 + i as usize]).collect();
        for (i, p) in all.iter().enumerate() {
            l.append(p).unwrap();
            for (j, q) in all[..=i].iter().enumerate() {
                assert_eq!(&l.read(j as u64).unwrap(), q);
            }
        }
        let big = vec![7u8; 200_000];
        l.append(&big).unwrap();
        assert_eq!(l.read(12).unwrap(), big);
        assert!(matches!(
            l.append(&vec![0u8; MAX_RECORD_LEN as usize + 1]),
            Err(SegmentError::PayloadTooLarge { .. })
        ));
        // Not poisoned by a rejected payload.
        assert_eq!(l.append(b"after").unwrap(), 13);
    }

    #[test]
    fn flipped_byte_in_durable_record_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 30, 200);
        let (l, _, _) = open_collect(dir, 30, 200).unwrap();
        let seg = &l.segments[1];
        let (path, first) = (seg.path.clone(), seg.first_index);
        let off = seg.offsets[1];
        let target = first + 1;
        drop(l);
        flip_byte(&path, off + 8 + payload(target).len() as u64 / 2);

        match open_collect(dir, 30, 200) {
            Err(SegmentError::Corrupt {
                path: p,
                offset,
                index,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, off);
                assert_eq!(index, Some(target));
                assert_eq!(reason, "checksum mismatch");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|x| x.1)),
        }
        // A sealed segment is never truncated, whatever durable_len says.
        assert!(matches!(
            open_collect(dir, 0, 200),
            Err(SegmentError::Corrupt { .. })
        ));
        let msg = open_collect(dir, 30, 200).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("(record {target})")), "{msg}");
    }

    #[test]
    fn flipped_byte_in_sealed_trailer_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 30, 200);
        let files = seg_files(dir);
        assert!(files.len() >= 3);
        for at_from_end in [24u64, 14, 6, 1] {
            let path = &files[0].1;
            let len = fs::metadata(path).unwrap().len();
            flip_byte(path, len - at_from_end);
            match open_collect(dir, 0, 200) {
                Err(SegmentError::Corrupt {
                    path: p, offset, ..
                }) => {
                    assert_eq!(&p, path);
                    assert_eq!(offset, len - TRAILER_LEN);
                }
                other => panic!("expected Corrupt, got {:?}", other.map(|x| x.1)),
            }
            flip_byte(path, len - at_from_end);
            open_collect(dir, 30, 200).unwrap();
        }
    }

    #[test]
    fn flipped_byte_in_header_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 30, 200);
        let files = seg_files(dir);
        flip_byte(&files[1].1, 14);
        assert!(matches!(
            open_collect(dir, 0, 200),
            Err(SegmentError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn torn_tail_beyond_durable_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let all = build(dir, 20, 1000);
        let files = seg_files(dir);
        let last = &files.last().unwrap().1;
        let len = fs::metadata(last).unwrap().len();
        let last_rec = RECORD_HEADER_LEN + payload(19).len() as u64;
        fs::OpenOptions::new()
            .write(true)
            .open(last)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let (mut l, report, seen) = open_collect(dir, 15, 1000).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 19,
                discarded_tail_bytes: last_rec - 3
            }
        );
        assert_eq!(seen, all[..19]);
        assert_eq!(fs::metadata(last).unwrap().len(), len - last_rec);
        assert_eq!(l.append(b"replacement").unwrap(), 19);
        l.append(b"twenty").unwrap();
        l.sync().unwrap();
        drop(l);

        let (_, report, seen) = open_collect(dir, 21, 1000).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 21,
                discarded_tail_bytes: 0
            }
        );
        assert_eq!(seen[..19], all[..19]);
        assert_eq!(seen[19], b"replacement");
        assert_eq!(seen[20], b"twenty");
    }

    #[test]
    fn torn_tail_within_durable_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 20, 1000);
        let last = seg_files(dir).last().unwrap().1.clone();
        let len = fs::metadata(&last).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        match open_collect(dir, 20, 1000) {
            Err(SegmentError::Corrupt { path, index, .. }) => {
                assert_eq!(path, last);
                assert_eq!(index, Some(19));
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|x| x.1)),
        }
        // Nothing was cut off by the failed open.
        assert_eq!(fs::metadata(&last).unwrap().len(), len - 3);
    }

    #[test]
    fn garbage_after_last_record_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let all = build(dir, 25, 300);
        let last = seg_files(dir).last().unwrap().1.clone();
        let len = fs::metadata(&last).unwrap().len();
        let mut f = fs::OpenOptions::new().append(true).open(&last).unwrap();
        // A plausible length (10) with a wrong checksum, then junk.
        f.write_all(&[10, 0, 0, 0, 1, 2, 3, 4]).unwrap();
        f.write_all(&[0xAB; 92]).unwrap();
        drop(f);

        let (mut l, report, seen) = open_collect(dir, 25, 300).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 25,
                discarded_tail_bytes: 100
            }
        );
        assert_eq!(seen, all);
        assert_eq!(fs::metadata(&last).unwrap().len(), len);
        l.append(b"more").unwrap();
        l.sync().unwrap();
        drop(l);
        let (_, report, seen) = open_collect(dir, 26, 300).unwrap();
        assert_eq!(report.records, 26);
        assert_eq!(seen[25], b"more");
    }

    #[test]
    fn huge_length_field_in_tail_is_not_allocated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 5, DEFAULT_ROLL_BYTES);
        let last = seg_files(dir).last().unwrap().1.clone();
        let mut f = fs::OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[0xFF; 8]).unwrap();
        f.write_all(&(MAX_RECORD_LEN - 1).to_le_bytes()).unwrap();
        f.write_all(&[0; 20]).unwrap();
        drop(f);
        let (_, report, _) = open_collect(dir, 5, DEFAULT_ROLL_BYTES).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: 5,
                discarded_tail_bytes: 32
            }
        );
        // With durable_len beyond what is intact the same damage is fatal.
        let mut f = fs::OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[0xFF; 8]).unwrap();
        drop(f);
        assert!(matches!(
            open_collect(dir, 6, DEFAULT_ROLL_BYTES),
            Err(SegmentError::Corrupt { index: Some(5), .. })
        ));
    }

    #[test]
    fn missing_segments_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 40, 200);
        let files = seg_files(dir);
        assert!(files.len() >= 4);

        // Deleting the last segment loses durable records.
        let (last_first, last_path) = files.last().unwrap().clone();
        let saved = fs::read(&last_path).unwrap();
        fs::remove_file(&last_path).unwrap();
        match open_collect(dir, 40, 200) {
            Err(SegmentError::MissingRecords {
                durable_len: 40,
                found,
                ..
            }) => {
                assert_eq!(found, last_first);
            }
            other => panic!("expected MissingRecords, got {:?}", other.map(|x| x.1)),
        }
        fs::write(&last_path, saved).unwrap();
        open_collect(dir, 40, 200).unwrap();

        // Deleting a middle segment leaves a gap, whatever durable_len says.
        let (_, mid) = &files[1];
        fs::remove_file(mid).unwrap();
        match open_collect(dir, 0, 200) {
            Err(SegmentError::Corrupt { path, .. }) => assert_eq!(path, files[2].1),
            other => panic!("expected Corrupt, got {:?}", other.map(|x| x.1)),
        }
    }

    #[test]
    fn missing_first_segment_and_overlap_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 40, 200);
        let files = seg_files(dir);
        // An extra copy of segment 1 named as if it started one record later
        // overlaps (and its header disagrees with its name).
        let (first1, ref path1) = files[1];
        fs::copy(path1, seg_path(dir, first1 + 1)).unwrap();
        assert!(matches!(
            open_collect(dir, 0, 200),
            Err(SegmentError::Corrupt { .. })
        ));
        fs::remove_file(seg_path(dir, first1 + 1)).unwrap();
        open_collect(dir, 40, 200).unwrap();

        fs::remove_file(&files[0].1).unwrap();
        match open_collect(dir, 0, 200) {
            Err(SegmentError::Corrupt { path, index, .. }) => {
                assert_eq!(path, *path1);
                assert_eq!(index, Some(first1));
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|x| x.1)),
        }
    }

    #[test]
    fn too_few_records_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_collect(tmp.path(), 1, 200),
            Err(SegmentError::MissingRecords {
                durable_len: 1,
                found: 0,
                ..
            })
        ));
    }

    #[test]
    fn torn_header_of_new_last_segment_is_discarded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let all = build(dir, 30, 200);
        // Leave a sealed last segment, as just before a roll.
        let (mut l, _, _) = open_collect(dir, 30, 200).unwrap();
        let b = l.segments[1].first_index;
        l.truncate(b).unwrap();
        drop(l);
        // A segment file created just before a crash: size extended, zeros.
        let torn = seg_path(dir, b);
        fs::write(&torn, [0u8; 30]).unwrap();
        assert!(matches!(
            open_collect(dir, b + 1, 200),
            Err(SegmentError::Corrupt { offset: 0, .. })
        ));
        let (mut l, report, seen) = open_collect(dir, b, 200).unwrap();
        assert_eq!(
            report,
            OpenReport {
                records: b,
                discarded_tail_bytes: 30
            }
        );
        assert_eq!(seen, all[..b as usize]);
        assert!(!torn.exists());
        assert_eq!(l.append(b"next").unwrap(), b);
        l.sync().unwrap();
        drop(l);
        let (_, _, seen) = open_collect(dir, b + 1, 200).unwrap();
        assert_eq!(seen[b as usize], b"next");
    }

    #[test]
    fn visitor_error_aborts_open() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 5, 200);
        let err = LedgerFiles::open(tmp.path(), 5, 200, |i, _| {
            if i == 3 {
                Err(format!("bad leaf {i}"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        match err {
            SegmentError::Visit { index: 3, source } => {
                assert_eq!(source.to_string(), "bad leaf 3")
            }
            other => panic!("expected Visit, got {other}"),
        }
    }

    #[test]
    fn truncate_then_append_then_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let all = build(dir, 40, 200);
        let (mut l, _, _) = open_collect(dir, 40, 200).unwrap();
        let segs_before = l.segment_count();
        // Cut inside a sealed segment.
        let cut_seg = &l.segments[1];
        assert!(cut_seg.sealed && cut_seg.count() >= 2);
        let cut = cut_seg.first_index + 1;
        l.truncate(cut).unwrap();
        assert_eq!(l.len(), cut);
        assert_eq!(l.segment_count(), 2);
        assert!(segs_before > 2);
        assert_eq!(seg_files(dir).len(), 2);
        assert_eq!(l.read(cut - 1).unwrap(), all[cut as usize - 1]);
        assert!(matches!(l.read(cut), Err(SegmentError::OutOfRange { .. })));
        assert!(matches!(
            l.truncate(cut + 1),
            Err(SegmentError::OutOfRange { .. })
        ));

        let mut expected: Vec<Vec<u8>> = all[..cut as usize].to_vec();
        for i in 0..30u64 {
            let p = format!("new {i}").into_bytes();
            assert_eq!(l.append(&p).unwrap(), expected.len() as u64);
            expected.push(p);
        }
        for (i, p) in expected.iter().enumerate() {
            assert_eq!(&l.read(i as u64).unwrap(), p);
        }
        // Truncate exactly at a segment boundary: the previous segment stays
        // sealed and a new one is started by the next append.
        let boundary = l.segments[2].first_index;
        l.truncate(boundary).unwrap();
        expected.truncate(boundary as usize);
        assert!(l.segments.last().unwrap().sealed);
        l.append(b"after boundary").unwrap();
        expected.push(b"after boundary".to_vec());
        l.sync().unwrap();
        drop(l);

        assert_eq!(independent_read(dir), expected);
        let (mut l, report, seen) = open_collect(dir, expected.len() as u64, 200).unwrap();
        assert_eq!(report.discarded_tail_bytes, 0);
        assert_eq!(seen, expected);

        // Unsynced appends, then truncate everything.
        l.append(b"x").unwrap();
        l.truncate(0).unwrap();
        assert!(l.is_empty());
        assert!(seg_files(dir).is_empty());
        l.append(b"fresh").unwrap();
        l.sync().unwrap();
        drop(l);
        let (_, _, seen) = open_collect(dir, 1, 200).unwrap();
        assert_eq!(seen, vec![b"fresh".to_vec()]);
    }

    #[test]
    fn reopen_with_sealed_last_segment_appends_to_new_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        build(dir, 30, 200);
        let (mut l, _, _) = open_collect(dir, 30, 200).unwrap();
        let boundary = l.segments[1].first_index;
        l.truncate(boundary).unwrap();
        drop(l);
        let (mut l, report, _) = open_collect(dir, boundary, 200).unwrap();
        assert_eq!(report.records, boundary);
        assert!(l.writer.is_none());
        l.append(b"next").unwrap();
        assert_eq!(l.read(boundary).unwrap(), b"next");
        l.sync().unwrap();
        drop(l);
        assert!(seg_path(dir, boundary).exists());
        let (_, _, seen) = open_collect(dir, boundary + 1, 200).unwrap();
        assert_eq!(seen.last().unwrap(), b"next");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<u8>),
        Sync,
        Truncate(prop::sample::Index),
        Reopen,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn random_appends_survive_reopen(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..60),
            roll in 0u64..6000,
            sync_at in 0usize..60,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let (mut l, _, _) = open_collect(dir, 0, roll).unwrap();
            for (i, p) in payloads.iter().enumerate() {
                prop_assert_eq!(l.append(p).unwrap(), i as u64);
                if i == sync_at {
                    l.sync().unwrap();
                }
            }
            for (i, p) in payloads.iter().enumerate() {
                prop_assert_eq!(&l.read(i as u64).unwrap(), p);
            }
            l.sync().unwrap();
            drop(l);
            prop_assert_eq!(&independent_read(dir), &payloads);
            let (l, report, seen) = open_collect(dir, payloads.len() as u64, roll).unwrap();
            prop_assert_eq!(report.records, payloads.len() as u64);
            prop_assert_eq!(report.discarded_tail_bytes, 0);
            prop_assert_eq!(&seen, &payloads);
            for (i, p) in payloads.iter().enumerate() {
                prop_assert_eq!(&l.read(i as u64).unwrap(), p);
            }
        }

        #[test]
        fn random_operations_match_a_model(
            ops in prop::collection::vec(
                prop_oneof![
                    6 => prop::collection::vec(any::<u8>(), 0..700).prop_map(Op::Append),
                    1 => Just(Op::Sync),
                    1 => any::<prop::sample::Index>().prop_map(Op::Truncate),
                    1 => Just(Op::Reopen),
                ],
                0..80,
            ),
            roll in 0u64..3000,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let (mut l, _, _) = open_collect(dir, 0, roll).unwrap();
            let mut model: Vec<Vec<u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(p) => {
                        prop_assert_eq!(l.append(&p).unwrap(), model.len() as u64);
                        model.push(p);
                    }
                    Op::Sync => l.sync().unwrap(),
                    Op::Truncate(at) => {
                        let len = at.index(model.len() + 1);
                        l.truncate(len as u64).unwrap();
                        model.truncate(len);
                    }
                    Op::Reopen => {
                        l.sync().unwrap();
                        drop(l);
                        let (nl, report, seen) = open_collect(dir, model.len() as u64, roll).unwrap();
                        prop_assert_eq!(report.discarded_tail_bytes, 0);
                        prop_assert_eq!(&seen, &model);
                        l = nl;
                    }
                }
                prop_assert_eq!(l.len(), model.len() as u64);
                if let Some(last) = model.last() {
                    prop_assert_eq!(&l.read(model.len() as u64 - 1).unwrap(), last);
                }
            }
            for (i, p) in model.iter().enumerate() {
                prop_assert_eq!(&l.read(i as u64).unwrap(), p);
            }
            l.sync().unwrap();
            drop(l);
            prop_assert_eq!(&independent_read(dir), &model);
        }

        #[test]
        fn damaged_files_never_panic(
            n in 1u64..30,
            roll in 0u64..800,
            file_pick in any::<prop::sample::Index>(),
            pos in any::<prop::sample::Index>(),
            xor in 1u8..=255,
            cut in any::<bool>(),
            durable in 0u64..35,
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            let all = build(dir, n, roll);
            let files = seg_files(dir);
            let path = &files[file_pick.index(files.len())].1;
            let mut bytes = fs::read(path).unwrap();
            let at = pos.index(bytes.len());
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] ^= xor;
            }
            fs::write(path, bytes).unwrap();
            if let Ok((mut l, report, seen)) = open_collect(dir, durable, roll) {
                prop_assert!(report.records >= durable);
                prop_assert_eq!(&seen[..], &all[..seen.len()]);
                for (i, p) in seen.iter().enumerate() {
                    prop_assert_eq!(&l.read(i as u64).unwrap(), p);
                }
                l.append(b"after damage").unwrap();
                l.sync().unwrap();
                drop(l);
                let (_, _, again) = open_collect(dir, report.records + 1, roll).unwrap();
                prop_assert_eq!(&again[..seen.len()], &seen[..]);
                prop_assert_eq!(again.last().unwrap(), b"after damage");
            }
        }
    }
}
