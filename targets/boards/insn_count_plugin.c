/*
 * tvm-intq instruction counter: a QEMU TCG plugin for qemu-user (aarch64, riscv64).
 *
 *   qemu-<arch> -plugin libinsn_count.so,out=COUNTS[,blocks=BLOCKS] PROGRAM ...
 *
 * COUNTS: the number of guest instructions executed so far, one line each time the guest makes
 *   the marker system call (see below) and a last line at exit. count_runner.cc makes one
 *   before and after every call it measures, so consecutive differences are instructions per
 *   call, without the start of the process and the loading of libraries.
 * BLOCKS (optional): "vaddr n_insns executions" for every translation block that ran from the
 *   first marker on: the straight-line code between branches, with how often it ran
 *   (tvm_intq.targets.mca weighs llvm-mca's cycles per block with it). Executions before the
 *   first marker are not counted: they are process start-up, imports and library loading
 *   (peer_runner.py's Python and its warm-up calls too), not the calls measured.
 *
 * Why our own plugin and not tests/tcg/plugins/bb.c or insn.c from the same source package:
 * those print one total at exit, which mixes program start-up and library loading (millions of
 * instructions) into every figure; the markers cut them out, and give one count per call, whose
 * equality across calls is the determinism check. Counting is inline (one add per block, no
 * callback), as in bb.c; the block profile, when asked for, uses a callback per block.
 * Guest threads: counts are summed over vCPUs; the runner keeps TVM to one thread.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* getpid: number 172 in the asm-generic table that aarch64 and riscv64 both use; the runner
 * passes MARKER_MAGIC as its (ignored) first argument, so no other getpid is a marker. */
#define MARKER_SYSCALL 172
#define MARKER_MAGIC 0x74766d2d696e7471ULL /* "tvm-intq" */

typedef struct Block {
  uint64_t vaddr, executions;
  size_t n_insns;
  struct Block *next;
} Block;

static struct qemu_plugin_scoreboard *score;
static qemu_plugin_u64 insns;
static uint64_t *marks;
static size_t n_marks, cap_marks;
static char *out_path, *blocks_path;
static Block *blocks; /* every translation (a block retranslated appears twice: summed later) */

static void mark(void) {
  if (n_marks == cap_marks) {
    cap_marks = cap_marks ? 2 * cap_marks : 64;
    marks = realloc(marks, cap_marks * sizeof *marks);
  }
  marks[n_marks++] = qemu_plugin_u64_sum(insns);
}

static void block_executed(unsigned int vcpu, void *udata) {
  if (n_marks) ((Block *)udata)->executions++;
}

static void tb_translated(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline_per_vcpu(tb, QEMU_PLUGIN_INLINE_ADD_U64, insns, n);
  if (blocks_path) {
    Block *b = calloc(1, sizeof *b);
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = n;
    b->next = blocks;
    blocks = b;
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_executed, QEMU_PLUGIN_CB_NO_REGS, b);
  }
}

static void syscall_made(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                         uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                         uint64_t a7, uint64_t a8) {
  if (num == MARKER_SYSCALL && a1 == MARKER_MAGIC) mark();
}

static void write_results(qemu_plugin_id_t id, void *unused) {
  mark();
  FILE *f = fopen(out_path, "w");
  if (f) {
    for (size_t i = 0; i < n_marks; i++) fprintf(f, "%" PRIu64 "\n", marks[i]);
    fclose(f);
  }
  if (blocks_path && (f = fopen(blocks_path, "w"))) {
    for (Block *b = blocks; b; b = b->next)
      if (b->executions) fprintf(f, "%" PRIx64 " %zu %" PRIu64 "\n", b->vaddr, b->n_insns, b->executions);
    fclose(f);
  }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv) {
  for (int i = 0; i < argc; i++) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      out_path = strdup(argv[i] + 4);
    } else if (strncmp(argv[i], "blocks=", 7) == 0) {
      blocks_path = strdup(argv[i] + 7);
    } else {
      fprintf(stderr, "insn_count: unknown argument %s (out=FILE[,blocks=FILE])\n", argv[i]);
      return -1;
    }
  }
  if (!out_path) {
    fprintf(stderr, "insn_count: out=FILE is required\n");
    return -1;
  }
  score = qemu_plugin_scoreboard_new(sizeof(uint64_t));
  insns = qemu_plugin_scoreboard_u64(score);
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_translated);
  qemu_plugin_register_vcpu_syscall_cb(id, syscall_made);
  qemu_plugin_register_atexit_cb(id, write_results, NULL);
  return 0;
}
