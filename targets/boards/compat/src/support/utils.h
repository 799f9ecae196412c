// tvm-intq compat header (see ../../README.md): the two string helpers the runtime uses.
#ifndef TVM_INTQ_COMPAT_SUPPORT_UTILS_H_
#define TVM_INTQ_COMPAT_SUPPORT_UTILS_H_
#include <cctype>
#include <string>
#include <string_view>

namespace tvm {
namespace support {

/*! \brief Whether \p str is a non-empty string of decimal digits. */
inline bool IsNumber(const std::string& str) {
  if (str.empty()) return false;
  for (char c : str) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

/*! \brief Whether \p str begins with \p prefix. */
template <typename S>
inline bool StartsWith(const S& str, std::string_view prefix) {
  std::string_view view(str.data(), str.size());
  return view.substr(0, prefix.size()) == prefix;
}

}  // namespace support
}  // namespace tvm
#endif
