//! Memory of the input buffers of the HTTP/1 and HTTP/2 readers: the bytes
//! of one direction, of which `buf[pos..]` are not decoded yet.

/// Buffer capacity kept between chunks when the buffered bytes need less.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Between chunks: drops the bytes already decoded and memory the rest
/// does not need; returns the bytes the buffer holds on to.
pub(crate) fn settle(buf: &mut Vec<u8>, pos: &mut usize) -> usize {
    buf.drain(..*pos);
    *pos = 0;
    if buf.capacity() > KEEP_CAPACITY.max(2 * buf.len()) {
        buf.shrink_to(KEEP_CAPACITY.max(buf.len()));
    }
    buf.capacity()
}

/// Gives back the memory the buffered bytes do not need; returns the
/// bytes the buffer still holds on to.
pub(crate) fn shrink(buf: &mut Vec<u8>) -> usize {
    buf.shrink_to_fit();
    buf.capacity()
}
