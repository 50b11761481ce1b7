//! The ring and its provided buffers: the two pieces of kernel-shared
//! memory the driver owns.

use std::alloc::{self, Layout};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Sets up a ring of `entries` submission slots (and four times as many
/// completion slots) with the best task-running mode the kernel accepts:
/// `SINGLE_ISSUER | DEFER_TASKRUN` (6.1), else `COOP_TASKRUN` (5.19), else
/// none. Returns the ring and which mode it got: `(coop_taskrun,
/// defer_taskrun)`.
///
/// # Errors
/// The `io_uring_setup` error of the plainest setup.
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, bool, bool)> {
    let cq = entries.saturating_mul(4);
    let deferred = IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries);
    if let Ok(ring) = deferred {
        return Ok((ring, false, true));
    }
    if let Ok(ring) = IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .build(entries)
    {
        return Ok((ring, true, false));
    }
    IoUring::builder()
        .setup_cqsize(cq)
        .build(entries)
        .map(|ring| (ring, false, false))
}

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): `count`
/// buffers of `size` bytes that the kernel picks from when data arrives for
/// a recv submitted with `BUFFER_SELECT`, so a recv that waits holds no
/// buffer. The completion names the buffer (its id); the driver reads it and
/// hands it back with [`recycle`](BufRing::recycle), then
/// [`publish`](BufRing::publish) makes every recycled buffer visible to the
/// kernel with one store.
///
/// The memory must outlive every recv that may still pick from it: the
/// driver drains its ring before it drops this (or leaks it on purpose).
pub(crate) struct BufRing {
    /// `count` entries, page-aligned; the kernel reads them. The tail is the
    /// `resv` field of entry 0.
    entries: NonNull<BufRingEntry>,
    /// `count * size` bytes the kernel writes received data into.
    bufs: NonNull<u8>,
    count: u16,
    size: u32,
    bgid: u16,
    /// Our tail: entries before it are the kernel's to take.
    tail: u16,
}

impl BufRing {
    const PAGE: usize = 4096;

    fn entries_layout(count: u16) -> Layout {
        let bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        Layout::from_size_align(bytes.max(Self::PAGE), Self::PAGE).expect("valid layout")
    }

    fn bufs_layout(count: u16, size: u32) -> Layout {
        Layout::from_size_align(usize::from(count) * size as usize, 64).expect("valid layout")
    }

    /// Allocates `count` (a power of two, at most 32768) buffers of `size`
    /// bytes, registers them with `ring` as group `bgid`, and provides them
    /// all.
    ///
    /// # Errors
    /// `EINVAL` from a kernel without buffer rings (before 5.19), or
    /// `ENOMEM`.
    pub(crate) fn new(ring: &IoUring, count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && size > 0);
        let el = Self::entries_layout(count);
        let bl = Self::bufs_layout(count, size);
        // SAFETY: both layouts have a non-zero size.
        let (e, b) = unsafe { (alloc::alloc_zeroed(el), alloc::alloc(bl)) };
        let (Some(entries), Some(bufs)) = (NonNull::new(e.cast()), NonNull::new(b)) else {
            // SAFETY: each non-null pointer came from `alloc` with its layout.
            unsafe {
                if !e.is_null() {
                    alloc::dealloc(e, el);
                }
                if !b.is_null() {
                    alloc::dealloc(b, bl);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut br = BufRing {
            entries,
            bufs,
            count,
            size,
            bgid,
            tail: 0,
        };
        // SAFETY: `entries` is a page-aligned, zeroed array of `count`
        // entries that lives until `br` is released or dropped, and the
        // driver keeps `br` alive while the ring may use it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                br.entries.as_ptr() as u64,
                count,
                bgid,
                0,
            )?
        };
        for bid in 0..count {
            br.recycle(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The buffer group id to name in recv submissions.
    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Size of each buffer.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// The first `len` bytes of buffer `bid`, which a completion just
    /// handed to us (the kernel will not touch it until it is recycled).
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= self.size as usize);
        // SAFETY: the range lies inside the `bufs` allocation (checked
        // above); the kernel wrote it before posting the completion and
        // leaves it alone until the buffer is recycled, which takes `&mut
        // self` and so cannot happen while this borrow lives.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .as_ptr()
                    .add(usize::from(bid) * self.size as usize),
                len,
            )
        }
    }

    /// Hands buffer `bid` back (visible to the kernel at the next
    /// [`publish`](BufRing::publish)).
    pub(crate) fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count);
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `slot` < `count`, so the entry is inside the allocation;
        // the kernel only reads entries between its head and our published
        // tail, and this one is past the published tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every recycled buffer visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail is the u16 `resv` field of entry 0, inside the
        // page-aligned allocation and suitably aligned for an AtomicU16; the
        // kernel reads it concurrently, hence the atomic release store (the
        // entries written before it become visible with it).
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// Unregisters the group from `ring` and frees the memory. Call only when
    /// no recv that selects from it is in flight.
    pub(crate) fn release(self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.bgid);
        drop(self);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both pointers came from `alloc` with these layouts; the
        // owner drops this only once no in-flight recv can select a buffer
        // (the driver drains its ring first, or leaks the BufRing).
        unsafe {
            alloc::dealloc(
                self.entries.as_ptr().cast(),
                Self::entries_layout(self.count),
            );
            alloc::dealloc(self.bufs.as_ptr(), Self::bufs_layout(self.count, self.size));
        }
    }
}
