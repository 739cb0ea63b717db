//! A traced process's memory read from user space, for what a probe could
//! not read: a probe cannot fault a page in (a constant in a program's
//! read-only data that nothing has touched yet is not mapped), while a
//! read from here faults it in as the process itself would.

/// Up to `len` bytes at `addr` in process `pid`: fewer when the range runs
/// into an unmapped page, None when nothing could be read (the process is
/// gone, or the address is not mapped).
pub fn read(pid: u32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
    // SAFETY: `local` covers `buf`, which outlives the call; the kernel
    // checks the remote range against the target's own mappings.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_stops_at_what_is_mapped() {
        let text = b"CLIENT_HANDSHAKE_TRAFFIC_SECRET";
        let got = read(std::process::id(), text.as_ptr() as u64, text.len());
        assert_eq!(got.as_deref(), Some(&text[..]));
        assert_eq!(read(std::process::id(), 0, 16), None, "page zero is never mapped");
        assert_eq!(read(u32::MAX >> 1, text.as_ptr() as u64, 4), None, "no such process");
    }
}
