// tvm-intq compat header (see ../../README.md): base64 streams over another stream (RFC 4648
// alphabet, '=' padding), used to put tensors into JSON.
#ifndef TVM_INTQ_COMPAT_SUPPORT_BASE64_H_
#define TVM_INTQ_COMPAT_SUPPORT_BASE64_H_
#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
inline int Decode(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

/*! \brief Writes base64 text of the bytes written to it into \p out; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Write(const void* data, size_t size) override {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      buf_[nbuf_++] = p[i];
      if (nbuf_ == 3) Flush3();
    }
    return size;
  }

  size_t Read(void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "read from a base64 output stream";
    return 0;
  }

  /*! \brief Write the last, padded quantum. */
  void Finish() {
    if (nbuf_ == 0) return;
    const char* a = base64::Alphabet();
    char q[4];
    q[0] = a[buf_[0] >> 2];
    q[1] = a[((buf_[0] & 3) << 4) | (nbuf_ > 1 ? buf_[1] >> 4 : 0)];
    q[2] = nbuf_ > 1 ? a[(buf_[1] & 15) << 2] : '=';
    q[3] = '=';
    out_->Write(q, 4);
    nbuf_ = 0;
  }

 private:
  void Flush3() {
    const char* a = base64::Alphabet();
    char q[4] = {a[buf_[0] >> 2], a[((buf_[0] & 3) << 4) | (buf_[1] >> 4)],
                 a[((buf_[1] & 15) << 2) | (buf_[2] >> 6)], a[buf_[2] & 63]};
    out_->Write(q, 4);
    nbuf_ = 0;
  }

  Stream* out_;
  unsigned char buf_[3] = {0, 0, 0};
  int nbuf_ = 0;
};

/*! \brief Reads the bytes that the base64 text of \p in encodes (whitespace is skipped). */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Start decoding from the current position of the underlying stream. */
  void InitPosition() {
    nout_ = 0;
    pos_ = 0;
    done_ = false;
  }

  size_t Read(void* data, size_t size) override {
    unsigned char* p = static_cast<unsigned char*>(data);
    size_t n = 0;
    while (n < size) {
      if (pos_ == nout_ && !Fill()) break;
      p[n++] = out_[pos_++];
    }
    return n;
  }

  size_t Write(const void*, size_t) override {
    TVM_FFI_THROW(InternalError) << "write to a base64 input stream";
    return 0;
  }

 private:
  // Decode the next quantum (4 characters -> up to 3 bytes); false at the end.
  bool Fill() {
    if (done_) return false;
    int v[4];
    int k = 0;
    while (k < 4) {
      char c;
      if (in_->Read(&c, 1) != 1) break;
      if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
      v[k++] = c == '=' ? -2 : base64::Decode(c);
      TVM_FFI_ICHECK_NE(v[k - 1], -1) << "invalid base64 character";
    }
    if (k == 0) {
      done_ = true;
      return false;
    }
    TVM_FFI_ICHECK_EQ(k, 4) << "truncated base64 text";
    pos_ = 0;
    nout_ = 1;
    out_[0] = static_cast<unsigned char>((v[0] << 2) | (v[1] >> 4));
    if (v[2] >= 0) {
      out_[nout_++] = static_cast<unsigned char>(((v[1] & 15) << 4) | (v[2] >> 2));
      if (v[3] >= 0) out_[nout_++] = static_cast<unsigned char>(((v[2] & 3) << 6) | v[3]);
    }
    if (v[2] < 0 || v[3] < 0) done_ = true;
    return true;
  }

  Stream* in_;
  unsigned char out_[3] = {0, 0, 0};
  size_t nout_ = 0, pos_ = 0;
  bool done_ = false;
};

}  // namespace support
}  // namespace tvm
#endif
