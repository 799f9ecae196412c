// tvm-intq compat header (see ../../README.md): the RPC endpoint allocates the temporary
// buffers of one call from an arena and recycles them all once the call is done.
#ifndef TVM_INTQ_COMPAT_SUPPORT_ARENA_H_
#define TVM_INTQ_COMPAT_SUPPORT_ARENA_H_
#include <cstddef>
#include <memory>
#include <new>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  /*! \brief Uninitialised storage for \p count objects of trivial type T. */
  template <typename T>
  T* allocate_(int count) {
    return static_cast<T*>(Alloc(sizeof(T) * static_cast<size_t>(count < 0 ? 0 : count), alignof(T)));
  }

  /*! \brief Make all memory handed out so far reusable. */
  void RecycleAll() {
    // Keep the first block (the common case: every call fits in it), drop the others.
    if (blocks_.size() > 1) blocks_.resize(1);
    used_ = 0;
  }

 private:
  static constexpr size_t kBlock = 64 << 10;
  struct Block {
    std::unique_ptr<std::max_align_t[]> data;
    size_t size;
  };

  void* Alloc(size_t bytes, size_t align) {
    if (align < alignof(std::max_align_t)) align = alignof(std::max_align_t);
    size_t offset = (used_ + align - 1) / align * align;
    if (blocks_.empty() || offset + bytes > blocks_.back().size) {
      size_t size = bytes > kBlock ? bytes : kBlock;
      size_t units = (size + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
      blocks_.push_back(Block{std::unique_ptr<std::max_align_t[]>(new std::max_align_t[units]),
                              units * sizeof(std::max_align_t)});
      offset = 0;
    }
    used_ = offset + bytes;
    return reinterpret_cast<char*>(blocks_.back().data.get()) + offset;
  }

  std::vector<Block> blocks_;
  size_t used_ = 0;  // bytes used in the last block
};

}  // namespace support
}  // namespace tvm
#endif
