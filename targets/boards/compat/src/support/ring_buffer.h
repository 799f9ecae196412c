// tvm-intq compat header (see ../../README.md): the byte FIFO the RPC endpoint buffers its
// channel through. Bytes are written at the tail and read from the head; the callbacks let
// the channel send from / receive into the buffer without an extra copy.
#ifndef TVM_INTQ_COMPAT_SUPPORT_RING_BUFFER_H_
#define TVM_INTQ_COMPAT_SUPPORT_RING_BUFFER_H_
#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : ring_(kInitCapacity) {}

  /*! \brief Number of bytes that can be read. */
  size_t bytes_available() const { return bytes_available_; }
  /*! \brief Current capacity. */
  size_t capacity() const { return ring_.size(); }

  /*! \brief Make room for at least \p n bytes in total (the content is kept). */
  void Reserve(size_t n) {
    if (n <= ring_.size()) {
      // Give memory back after a large transfer once the content is small again.
      if (ring_.size() > kInitCapacity * 8 && n < ring_.size() / 8 && bytes_available_ < n) {
        Resize(std::max(n, kInitCapacity));
      }
      return;
    }
    size_t cap = ring_.size();
    while (cap < n) cap *= 2;
    Resize(cap);
  }

  /*! \brief Read \p size bytes (they must be available). */
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_GE(bytes_available_, size);
    char* out = static_cast<char*>(data);
    size_t first = std::min(size, ring_.size() - head_);
    std::memcpy(out, ring_.data() + head_, first);
    std::memcpy(out + first, ring_.data(), size - first);
    Consume(size);
  }

  /*! \brief Pass up to \p max_nbytes readable bytes to fsend(ptr, n) -> bytes taken. */
  template <typename FSend>
  size_t ReadWithCallback(FSend fsend, size_t max_nbytes) {
    size_t size = std::min({max_nbytes, bytes_available_, ring_.size() - head_});
    if (size == 0) return 0;
    size_t taken = fsend(ring_.data() + head_, size);
    TVM_FFI_ICHECK_LE(taken, size);
    Consume(taken);
    return taken;
  }

  /*! \brief Append \p size bytes. */
  void Write(const void* data, size_t size) {
    Reserve(bytes_available_ + size);
    const char* in = static_cast<const char*>(data);
    size_t tail = (head_ + bytes_available_) % ring_.size();
    size_t first = std::min(size, ring_.size() - tail);
    std::memcpy(ring_.data() + tail, in, first);
    std::memcpy(ring_.data(), in + first, size - first);
    bytes_available_ += size;
  }

  /*! \brief Let frecv(ptr, n) -> bytes written fill up to \p max_nbytes at the tail. */
  template <typename FRecv>
  size_t WriteWithCallback(FRecv frecv, size_t max_nbytes) {
    Reserve(bytes_available_ + max_nbytes);
    size_t tail = (head_ + bytes_available_) % ring_.size();
    size_t size = std::min(max_nbytes, ring_.size() - tail);
    if (size == 0) return 0;
    size_t got = frecv(ring_.data() + tail, size);
    TVM_FFI_ICHECK_LE(got, size);
    bytes_available_ += got;
    return got;
  }

 private:
  static constexpr size_t kInitCapacity = 4 << 10;

  void Consume(size_t n) {
    head_ = (head_ + n) % ring_.size();
    bytes_available_ -= n;
    if (bytes_available_ == 0) head_ = 0;
  }

  // Re-lay the content contiguously at the start of a buffer of \p cap bytes.
  void Resize(size_t cap) {
    std::vector<char> next(cap);
    size_t first = std::min(bytes_available_, ring_.size() - head_);
    std::memcpy(next.data(), ring_.data() + head_, first);
    std::memcpy(next.data() + first, ring_.data(), bytes_available_ - first);
    ring_.swap(next);
    head_ = 0;
  }

  std::vector<char> ring_;
  size_t head_ = 0;             // index of the first readable byte
  size_t bytes_available_ = 0;  // readable bytes
};

}  // namespace support
}  // namespace tvm
#endif
