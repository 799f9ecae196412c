// tvm-intq compat header (see ../../README.md): the POSIX TCP socket wrapper that
// rpc/rpc_socket_impl.cc uses (client connect and the server loop on an accepted socket).
// A TCPSocket is a plain descriptor holder: copies share the descriptor, Close() closes it.
#ifndef TVM_INTQ_COMPAT_SUPPORT_SOCKET_H_
#define TVM_INTQ_COMPAT_SUPPORT_SOCKET_H_
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <tvm/ffi/error.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief An IPv4/IPv6 address resolved from a host name and a port. */
class SockAddr {
 public:
  SockAddr() { std::memset(&addr_, 0, sizeof(addr_)); }
  SockAddr(const char* url, int port) : SockAddr() { Set(url, port); }

  void Set(const char* host, int port) {
    addrinfo hints;
    std::memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int err = getaddrinfo(host, service.c_str(), &hints, &res);
    TVM_FFI_ICHECK(err == 0 && res != nullptr)
        << "cannot resolve address " << host << ":" << port << ": " << gai_strerror(err);
    std::memcpy(&addr_, res->ai_addr, res->ai_addrlen);
    len_ = res->ai_addrlen;
    freeaddrinfo(res);
  }

  int ss_family() const { return addr_.ss_family; }
  const sockaddr* addr() const { return reinterpret_cast<const sockaddr*>(&addr_); }
  socklen_t size() const { return len_; }

  std::string AsString() const {
    char host[NI_MAXHOST] = {0}, port[NI_MAXSERV] = {0};
    if (getnameinfo(addr(), len_, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      return "?";
    }
    return std::string(host) + ":" + port;
  }

 private:
  sockaddr_storage addr_;
  socklen_t len_ = sizeof(sockaddr_storage);
};

class Socket {
 public:
  using SockType = int;
  static constexpr SockType kInvalidSocket = -1;

  SockType sockfd;

  explicit Socket(SockType fd = kInvalidSocket) : sockfd(fd) {}

  bool BadSocket() const { return sockfd == kInvalidSocket; }

  void Close() {
    if (sockfd != kInvalidSocket) {
      close(sockfd);
      sockfd = kInvalidSocket;
    }
  }

  /*! \brief Throw the current errno as an error of operation \p msg. */
  [[noreturn]] static void Error(const char* msg) {
    int err = errno;
    TVM_FFI_THROW(InternalError) << "Socket " << msg << " Error: " << std::strerror(err);
    throw;  // not reached
  }
};

class TCPSocket : public Socket {
 public:
  TCPSocket() = default;
  explicit TCPSocket(SockType fd) : Socket(fd) {}

  void Create(int family = AF_INET) {
    sockfd = socket(family, SOCK_STREAM, 0);
    if (sockfd == kInvalidSocket) Error("Create");
  }

  bool Connect(const SockAddr& addr) { return connect(sockfd, addr.addr(), addr.size()) == 0; }

  /*! \brief One send; -1 on error (EINTR retried). */
  ssize_t Send(const void* buf, size_t len, int flags = 0) {
    ssize_t n;
    do {
      n = send(sockfd, buf, len, flags | MSG_NOSIGNAL);
    } while (n == -1 && errno == EINTR);
    return n;
  }

  /*! \brief One receive; 0 at end of stream, -1 on error (EINTR retried). */
  ssize_t Recv(void* buf, size_t len, int flags = 0) {
    ssize_t n;
    do {
      n = recv(sockfd, buf, len, flags);
    } while (n == -1 && errno == EINTR);
    return n;
  }

  /*! \brief Send all \p len bytes; returns the bytes sent (less only on error). */
  size_t SendAll(const void* buf, size_t len) {
    const char* p = static_cast<const char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Send(p + done, len - done);
      if (n == -1) Error("SendAll");
      done += static_cast<size_t>(n);
    }
    return done;
  }

  /*! \brief Receive exactly \p len bytes, fewer only if the peer closes. */
  size_t RecvAll(void* buf, size_t len) {
    char* p = static_cast<char*>(buf);
    size_t done = 0;
    while (done < len) {
      ssize_t n = Recv(p + done, len - done, MSG_WAITALL);
      if (n == -1) Error("RecvAll");
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }
};

}  // namespace support
}  // namespace tvm
#endif
