// tvm-intq compat header (see ../../../../README.md): NVTX ranges mark CUDA profiler
// timelines; the board has no CUDA, so a range is a no-op.
#ifndef TVM_INTQ_COMPAT_SUPPORT_CUDA_NVTX_H_
#define TVM_INTQ_COMPAT_SUPPORT_CUDA_NVTX_H_
namespace tvm {
namespace support {
class NVTXScopedRange {
 public:
  template <typename T>
  explicit NVTXScopedRange(const T&) {}
  NVTXScopedRange(const NVTXScopedRange&) = delete;
  NVTXScopedRange& operator=(const NVTXScopedRange&) = delete;
};
}  // namespace support
}  // namespace tvm
#endif
