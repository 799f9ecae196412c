// tvm-intq compat header (see ../../README.md): the runtime sources include
// "support/bytes_io.h"; the stream classes are in tvm/support/bytes_io.h, taken from the
// apache-tvm-tirx wheel at build time.
#ifndef TVM_INTQ_COMPAT_SUPPORT_BYTES_IO_H_
#define TVM_INTQ_COMPAT_SUPPORT_BYTES_IO_H_
#include <tvm/support/bytes_io.h>
#endif
