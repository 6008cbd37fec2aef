// Artifact upload and download throughput over mTLS on loopback, against the
// raw limits of this machine measured in the same run:
//   - OpenSSL EVP AES-128-GCM and AES-256-GCM, 16 KiB records (a TLS record's
//     size), encryption and decryption;
//   - SHA-256 in memory (offsite::Sha256) and of the file (Sha256File);
//   - a plain file copy (read + write, 1 MiB buffers, no fsync).
// The transfers go through client/transfer.h's UploadArtifact and
// DownloadArtifact against an in-process OffsiteServer, so they include the
// client's and the server's SHA-256 checks. Each transfer is split into phases
// with the progress callback: before the first chunk, streaming, after the last.
//
//   artifact_transfer_bench [--mib N] [--repeat N] [--chunks K,K,...]
//                           [--upload-chunks K,K,...] [--skip-raw] [--insecure]
//
// Chunk sizes are in KiB. --insecure runs the same transfers in plaintext, to
// show what TLS costs. Every figure is the median of --repeat runs.
// All files stay in the page cache (nothing is fsynced), so "disk" here means
// the kernel's file path, the same for the copy and for the transfers.

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/connection.h"
#include "client/transfer.h"
#include "common/runtime.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "offsite/v1/artifact.grpc.pb.h"
#include "server/server.h"

namespace offsite {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMB = 1e6;  // throughput in MB/s (10^6 bytes), sizes in MiB
constexpr size_t kRecord = 16 << 10;
constexpr size_t kMemoryBuffer = 64 << 20;

struct BenchOptions {
  int64_t mib = 512;
  int repeat = 3;
  std::vector<int> download_chunks_kib = {256, 1024, 4096};
  std::vector<int> upload_chunks_kib = {1024};
  bool skip_raw = false;
  bool insecure = false;  // plaintext gRPC instead of mTLS
};

double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// MB/s of `bytes` processed by `run`, median of `repeat` runs.
absl::StatusOr<double> Rate(int repeat, int64_t bytes, const std::function<absl::Status()>& run) {
  std::vector<double> rates;
  for (int i = 0; i < repeat; ++i) {
    Clock::time_point start = Clock::now();
    OFFSITE_RETURN_IF_ERROR(run());
    rates.push_back(bytes / Seconds(start, Clock::now()) / kMB);
  }
  return Median(rates);
}

// AES-GCM over `bytes` of `input` in 16 KiB records, each with its own IV and
// tag, as TLS does. Decrypting checks the tags, so it runs on real ciphertext.
absl::Status AesGcm(const EVP_CIPHER* cipher, bool encrypt, const std::string& input,
                    int64_t bytes) {
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      &EVP_CIPHER_CTX_free);
  unsigned char key[32], iv[12] = {0}, tag[16];
  RAND_bytes(key, sizeof(key));
  std::vector<unsigned char> out(kRecord + 16);
  // For decryption: one valid record and its tag, decrypted over and over
  // (the input walk of the encrypt case is what stresses memory; this is the
  // same per-byte work).
  std::string record = input.substr(0, kRecord);
  unsigned char record_tag[16];
  if (!encrypt) {
    int n = 0;
    EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key, iv);
    EVP_EncryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(record.data()), &n,
                      reinterpret_cast<const unsigned char*>(input.data()), kRecord);
    EVP_EncryptFinal_ex(ctx.get(), out.data(), &n);
    EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, record_tag);
  }
  size_t pos = 0;
  for (int64_t done = 0; done < bytes; done += kRecord) {
    int n = 0;
    if (encrypt) {
      ++iv[11];
      const auto* in = reinterpret_cast<const unsigned char*>(input.data() + pos);
      pos = (pos + kRecord) % input.size();
      if (EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key, iv) != 1 ||
          EVP_EncryptUpdate(ctx.get(), out.data(), &n, in, kRecord) != 1 ||
          EVP_EncryptFinal_ex(ctx.get(), out.data() + n, &n) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, tag) != 1) {
        return absl::InternalError("EVP encryption failed");
      }
    } else {
      if (EVP_DecryptInit_ex(ctx.get(), cipher, nullptr, key, iv) != 1 ||
          EVP_DecryptUpdate(ctx.get(), out.data(), &n,
                            reinterpret_cast<const unsigned char*>(record.data()), kRecord) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, record_tag) != 1 ||
          EVP_DecryptFinal_ex(ctx.get(), out.data() + n, &n) != 1) {
        return absl::InternalError("EVP decryption failed (tag mismatch)");
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Sha256Memory(const std::string& input, int64_t bytes) {
  Sha256 hasher;
  constexpr size_t kPiece = 1 << 20;
  size_t pos = 0;
  for (int64_t done = 0; done < bytes; done += kPiece) {
    hasher.Update(std::string_view(input.data() + pos, kPiece));
    pos = (pos + kPiece) % input.size();
  }
  return hasher.HexDigest().size() == 64 ? absl::OkStatus() : absl::InternalError("bad digest");
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (in < 0 || out < 0) return absl::InternalError(absl::StrCat("cannot copy ", from, " to ", to));
  std::vector<char> buffer(1 << 20);
  absl::Status status;
  while (true) {
    ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0) status = absl::InternalError("read failed");
    if (n <= 0) break;
    if (::write(out, buffer.data(), n) != n) {
      status = absl::InternalError("write failed");
      break;
    }
  }
  ::close(in);
  ::close(out);
  return status;
}

absl::Status WriteRandomFile(const std::string& path, int64_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", path));
  std::vector<unsigned char> buffer(1 << 20);
  for (int64_t done = 0; done < bytes; done += buffer.size()) {
    const size_t n = std::min<int64_t>(buffer.size(), bytes - done);
    RAND_bytes(buffer.data(), static_cast<int>(n));
    if (::write(fd, buffer.data(), n) != static_cast<ssize_t>(n)) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot write ", path));
    }
  }
  ::close(fd);
  return absl::OkStatus();
}

// Makes the file's content new (and so its SHA-256), so an upload is never
// answered by the server's "you already have this artifact" shortcut.
absl::Status Perturb(const std::string& path, uint64_t counter) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", path));
  const bool ok = ::pwrite(fd, &counter, sizeof(counter), 0) == sizeof(counter);
  ::close(fd);
  return ok ? absl::OkStatus() : absl::InternalError(absl::StrCat("cannot write ", path));
}

// Seconds of one transfer, split by the progress callback into the part
// before the first chunk, the streaming, and the part after the last chunk.
struct Phases {
  double total = 0, head = 0, stream = 0, tail = 0;
};

struct PhaseClock {
  Clock::time_point start = Clock::now(), first, last;
  bool seen = false;
  TransferProgress Callback(int64_t total) {
    return [this, total](int64_t done, int64_t) {
      const Clock::time_point now = Clock::now();
      if (!seen) {
        first = now;
        seen = true;
      }
      if (done >= total) last = now;
    };
  }
  Phases Finish() const {
    const Clock::time_point end = Clock::now();
    return {Seconds(start, end), Seconds(start, first), Seconds(first, last), Seconds(last, end)};
  }
};

struct PhaseRates {
  double total = 0, head_s = 0, stream = 0, tail_s = 0;
};

PhaseRates MedianRates(const std::vector<Phases>& runs, int64_t bytes) {
  std::vector<double> total, head, stream, tail;
  for (const Phases& p : runs) {
    total.push_back(bytes / p.total / kMB);
    head.push_back(p.head);
    stream.push_back(bytes / p.stream / kMB);
    tail.push_back(p.tail);
  }
  return {Median(total), Median(head), Median(stream), Median(tail)};
}

void PrintTransfer(const std::string& name, const PhaseRates& r) {
  std::printf("%-34s %9.0f %9.2f %12.0f %9.2f\n", name.c_str(), r.total, r.head_s, r.stream,
              r.tail_s);
  std::fflush(stdout);
}

absl::Status Run(const BenchOptions& options, const std::string& dir) {
  const int64_t bytes = options.mib << 20;
  const std::string source = dir + "/source.bin";
  Clock::time_point start = Clock::now();
  OFFSITE_RETURN_IF_ERROR(WriteRandomFile(source, bytes));
  std::printf("created %lld MiB of random bytes in %.1f s\n", static_cast<long long>(options.mib),
              Seconds(start, Clock::now()));

  struct Raw {
    double aes128_enc = 0, aes128_dec = 0, aes256_enc = 0, aes256_dec = 0, sha_mem = 0,
           sha_file = 0, copy = 0;
  } raw;
  if (!options.skip_raw) {
    std::string input(kMemoryBuffer, '\0');
    RAND_bytes(reinterpret_cast<unsigned char*>(input.data()), static_cast<int>(input.size()));
    const int64_t crypto_bytes = std::min<int64_t>(bytes, int64_t{512} << 20);
    auto aes = [&](const EVP_CIPHER* cipher, bool encrypt) {
      return Rate(options.repeat, crypto_bytes,
                  [&] { return AesGcm(cipher, encrypt, input, crypto_bytes); });
    };
    OFFSITE_ASSIGN_OR_RETURN(raw.aes128_enc, aes(EVP_aes_128_gcm(), true));
    OFFSITE_ASSIGN_OR_RETURN(raw.aes128_dec, aes(EVP_aes_128_gcm(), false));
    OFFSITE_ASSIGN_OR_RETURN(raw.aes256_enc, aes(EVP_aes_256_gcm(), true));
    OFFSITE_ASSIGN_OR_RETURN(raw.aes256_dec, aes(EVP_aes_256_gcm(), false));
    OFFSITE_ASSIGN_OR_RETURN(raw.sha_mem, Rate(options.repeat, crypto_bytes,
                                               [&] { return Sha256Memory(input, crypto_bytes); }));
    OFFSITE_ASSIGN_OR_RETURN(
        raw.sha_file, Rate(options.repeat, bytes, [&] { return Sha256File(source).status(); }));
    const std::string copy = dir + "/copy.bin";
    OFFSITE_ASSIGN_OR_RETURN(raw.copy, Rate(options.repeat, bytes, [&] {
                               absl::Status s = CopyFile(source, copy);
                               std::remove(copy.c_str());
                               return s;
                             }));
    std::printf("\nraw limits (MB/s, median of %d)\n", options.repeat);
    std::printf("  AES-128-GCM encrypt, 16 KiB records  %8.0f\n", raw.aes128_enc);
    std::printf("  AES-128-GCM decrypt, 16 KiB records  %8.0f\n", raw.aes128_dec);
    std::printf("  AES-256-GCM encrypt, 16 KiB records  %8.0f\n", raw.aes256_enc);
    std::printf("  AES-256-GCM decrypt, 16 KiB records  %8.0f\n", raw.aes256_dec);
    std::printf("  SHA-256, in memory (1 MiB updates)   %8.0f\n", raw.sha_mem);
    std::printf("  SHA-256 of the file (Sha256File)     %8.0f\n", raw.sha_file);
    std::printf("  file copy, read + write, no fsync    %8.0f\n", raw.copy);
    std::fflush(stdout);
  }

  // The server, with certificates created on first start; the owner uploads.
  ConfigureThreads(0);
  v1::ServerConfig config;
  config.set_data_dir(dir + "/server");
  config.set_listen_address("127.0.0.1:0");
  config.set_insecure(options.insecure);
  OFFSITE_ASSIGN_OR_RETURN(std::unique_ptr<OffsiteServer> server, OffsiteServer::Start(config));
  const std::string certs = dir + "/server/certs";
  ConnectionOptions connection;
  connection.server = absl::StrCat("127.0.0.1:", server->port());
  connection.ca_file = certs + "/ca.pem";
  connection.cert_file = certs + "/owner.pem";
  connection.key_file = certs + "/owner.key";
  connection.insecure = options.insecure;
  OFFSITE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Connect(connection));
  auto stub = v1::ArtifactService::NewStub(channel);

  std::printf("\ntransfers of %lld MiB over gRPC + %s on loopback (median of %d)\n",
              static_cast<long long>(options.mib), options.insecure ? "PLAINTEXT" : "mTLS",
              options.repeat);
  std::printf("%-34s %9s %9s %12s %9s\n", "transfer", "MB/s", "before_s", "stream_MB/s", "after_s");
  std::printf("  (before: until the first chunk; after: from the last chunk to the return)\n");

  uint64_t counter = 0;
  std::string artifact_id;
  double upload_1m = 0, download_1m = 0;
  for (int kib : options.upload_chunks_kib) {
    std::vector<Phases> runs;
    absl::Status failed;
    for (int i = 0; i < options.repeat && failed.ok(); ++i) {
      OFFSITE_RETURN_IF_ERROR(Perturb(source, ++counter));
      TransferOptions transfer;
      transfer.chunk_size = kib << 10;
      transfer.max_retries = 0;
      PhaseClock clock;
      transfer.progress = clock.Callback(bytes);
      absl::StatusOr<v1::Artifact> artifact = UploadArtifact(*stub, source, "bench.bin", transfer);
      if (!artifact.ok()) {
        failed = artifact.status();
        break;
      }
      runs.push_back(clock.Finish());
      if (artifact_id.empty()) {
        artifact_id = artifact->id();  // kept for the downloads
      } else {
        const std::string blob = absl::StrCat(
            config.data_dir(), "/blobs/", artifact->sha256().substr(0, 2), "/", artifact->sha256());
        std::remove(blob.c_str());  // only disk space; the record is never read again
      }
    }
    const std::string name = absl::StrCat("upload, ", kib, " KiB chunks");
    if (!failed.ok()) {
      std::printf("%-34s FAILED: %s\n", name.c_str(), failed.ToString().c_str());
      continue;
    }
    PhaseRates r = MedianRates(runs, bytes);
    if (kib == 1024) upload_1m = r.total;
    PrintTransfer(name, r);
  }
  if (artifact_id.empty()) return absl::InternalError("no upload succeeded; nothing to download");

  const std::string target = dir + "/downloaded.bin";
  for (int kib : options.download_chunks_kib) {
    std::vector<Phases> runs;
    absl::Status failed;
    for (int i = 0; i < options.repeat; ++i) {
      std::remove(target.c_str());
      TransferOptions transfer;
      transfer.chunk_size = kib << 10;
      transfer.max_retries = 0;
      PhaseClock clock;
      transfer.progress = clock.Callback(bytes);
      absl::StatusOr<v1::Artifact> artifact =
          DownloadArtifact(*stub, artifact_id, target, transfer);
      std::remove((target + ".part").c_str());
      if (!artifact.ok()) {
        failed = artifact.status();
        break;
      }
      runs.push_back(clock.Finish());
    }
    std::remove(target.c_str());
    const std::string name = absl::StrCat("download, ", kib, " KiB chunks");
    if (!failed.ok()) {
      std::printf("%-34s FAILED: %s\n", name.c_str(), failed.ToString().c_str());
      continue;
    }
    PhaseRates r = MedianRates(runs, bytes);
    if (kib == 1024) download_1m = r.total;
    PrintTransfer(name, r);
  }
  server->Shutdown();

  if (!options.skip_raw && upload_1m > 0 && download_1m > 0) {
    // Bounds, per byte: each stage's time adds up if one core did them in
    // turn ("serial"); if the stages overlapped perfectly, the slowest alone
    // would bound it. TLS here is taken at the slower of the two AES variants.
    const double aes_enc = std::min(raw.aes128_enc, raw.aes256_enc);
    const double aes_dec = std::min(raw.aes128_dec, raw.aes256_dec);
    auto serial = [](std::vector<double> rates) {
      double s = 0;
      for (double r : rates) s += 1 / r;
      return 1 / s;
    };
    // Upload: client hashes the file, reads it, encrypts; server decrypts,
    // appends, then hashes the file twice (FinishUpload, then AddFile).
    const double up_serial =
        serial({raw.sha_file, aes_enc, aes_dec, raw.copy, raw.sha_file, raw.sha_file});
    // Download: server reads, encrypts; client decrypts, writes, hashes the file.
    const double down_serial = serial({aes_enc, aes_dec, raw.copy, raw.sha_file});
    const double slowest = std::min({aes_enc, aes_dec, raw.sha_file, raw.copy});
    std::printf("\nagainst the raw limits (1 MiB chunks)\n");
    std::printf("  slowest single raw stage            %8.0f MB/s\n", slowest);
    std::printf("  upload serial bound                 %8.0f MB/s  (SHA x3, AES enc+dec, copy)\n",
                up_serial);
    std::printf("  download serial bound               %8.0f MB/s  (SHA x1, AES enc+dec, copy)\n",
                down_serial);
    std::printf("  upload:   %6.0f MB/s = %4.2f of the slowest stage, %4.2f of its serial bound\n",
                upload_1m, upload_1m / slowest, upload_1m / up_serial);
    std::printf("  download: %6.0f MB/s = %4.2f of the slowest stage, %4.2f of its serial bound\n",
                download_1m, download_1m / slowest, download_1m / down_serial);
  }
  return absl::OkStatus();
}

std::vector<int> ParseList(const char* flag, const char* value) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(value ? value : "", ',')) {
    int kib = 0;
    if (!absl::SimpleAtoi(part, &kib) || kib <= 0 || kib > (64 << 10)) {
      std::fprintf(stderr, "%s needs comma-separated KiB sizes, e.g. 256,1024,4096\n", flag);
      std::exit(2);
    }
    out.push_back(kib);
  }
  return out;
}

int ParsePositive(const char* flag, const char* value) {
  int parsed = 0;
  if (value == nullptr || !absl::SimpleAtoi(value, &parsed) || parsed <= 0) {
    std::fprintf(stderr, "%s needs a positive integer\n", flag);
    std::exit(2);
  }
  return parsed;
}

int Main(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (std::strcmp(argv[i], "--mib") == 0) {
      options.mib = ParsePositive(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--repeat") == 0) {
      options.repeat = ParsePositive(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--chunks") == 0) {
      options.download_chunks_kib = ParseList(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--upload-chunks") == 0) {
      options.upload_chunks_kib = ParseList(argv[i], value);
      ++i;
    } else if (std::strcmp(argv[i], "--skip-raw") == 0) {
      options.skip_raw = true;
    } else if (std::strcmp(argv[i], "--insecure") == 0) {
      options.insecure = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--mib N] [--repeat N] [--chunks KIB,...] [--upload-chunks KIB,...] "
                   "[--skip-raw] [--insecure]\n",
                   argv[0]);
      return 2;
    }
  }
  ConfigureThreads(0);
  std::printf("runtime: %s\n", RuntimeSummary().c_str());

  std::string dir = (std::filesystem::temp_directory_path() / "artifact_bench_XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  absl::Status status = Run(options, dir);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  if (!status.ok()) {
    std::fprintf(stderr, "artifact_transfer_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace offsite

int main(int argc, char** argv) { return offsite::Main(argc, argv); }
