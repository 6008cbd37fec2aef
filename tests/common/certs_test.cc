#include "common/certs.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/access_config.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace offsite {
namespace {

using ::testing::HasSubstr;

struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

X509Ptr LoadCertificate(const std::string& path) {
  std::string pem = ReadFile(path).value();
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509Ptr cert(PEM_read_bio_X509(bio, nullptr, nullptr, nullptr));
  BIO_free(bio);
  EXPECT_NE(cert, nullptr) << path;
  return cert;
}

// "" if `cert` chains to `ca` for `purpose` (X509_PURPOSE_SSL_SERVER, ...),
// else OpenSSL's reason.
std::string VerifyError(X509* ca, X509* cert, int purpose) {
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, cert, nullptr);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  std::string error;
  if (X509_verify_cert(ctx) != 1) {
    error = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
  }
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return error;
}

int DaysUntilExpiry(X509* cert) {
  int days = 0;
  int seconds = 0;
  EXPECT_EQ(ASN1_TIME_diff(&days, &seconds, nullptr, X509_get0_notAfter(cert)), 1);
  return days;
}

class CertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "certs_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    dir_ = root_ + "/certs";
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void Init() {
    CertBundleOptions options;
    options.dir = dir_;
    absl::Status status = InitCertificates(options);
    ASSERT_TRUE(status.ok()) << status;
  }

  std::string Path(const std::string& file) const { return dir_ + "/" + file; }

  static mode_t Mode(const std::string& path) {
    struct stat st;
    EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
  }

  v1::AccessConfig Access() const {
    absl::StatusOr<v1::AccessConfig> config = LoadAccessConfig(Path("access.textproto"));
    EXPECT_TRUE(config.ok()) << config.status();
    return config.value_or(v1::AccessConfig());
  }

  std::string root_;
  std::string dir_;
};

TEST_F(CertsTest, InitCreatesBundleWithPrivateKeysOnlyOwnerReadable) {
  Init();
  EXPECT_EQ(Mode(dir_), 0700u);
  for (const char* file : {"ca.key", "server.key", "owner.key"}) {
    EXPECT_EQ(Mode(Path(file)), 0600u) << file;
  }
  for (const char* file : {"ca.pem", "server.pem", "owner.pem", "access.textproto"}) {
    EXPECT_EQ(Mode(Path(file)), 0644u) << file;
  }
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_),
                          std::filesystem::directory_iterator()),
            7);
}

TEST_F(CertsTest, CaIsAnEcP256CertificateAuthority) {
  Init();
  X509Ptr ca = LoadCertificate(Path("ca.pem"));
  EXPECT_EQ(X509_check_ca(ca.get()), 1);
  EXPECT_TRUE(X509_get_key_usage(ca.get()) & KU_KEY_CERT_SIGN);
  EXPECT_TRUE(X509_get_key_usage(ca.get()) & KU_CRL_SIGN);
  EXPECT_NE(X509_get0_subject_key_id(ca.get()), nullptr);
  EXPECT_EQ(X509_get_signature_nid(ca.get()), NID_ecdsa_with_SHA256);
  EVP_PKEY* key = X509_get0_pubkey(ca.get());
  char group[64];
  ASSERT_EQ(EVP_PKEY_get_group_name(key, group, sizeof(group), nullptr), 1);
  EXPECT_STREQ(group, "prime256v1");
  EXPECT_NEAR(DaysUntilExpiry(ca.get()), kDefaultCaValidityDays, 1);
  // 128 random bits: fewer than 65 significant ones has odds of 2^-63.
  BIGNUM* serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(ca.get()), nullptr);
  EXPECT_GT(BN_num_bits(serial), 64);
  BN_free(serial);
}

TEST_F(CertsTest, ServerCertificateVerifiesAgainstCaWithSans) {
  CertBundleOptions options;
  options.dir = dir_;
  options.server_names = {"train.example.com", "10.1.2.3", "fd00::7", "localhost"};
  ASSERT_TRUE(InitCertificates(options).ok());
  X509Ptr ca = LoadCertificate(Path("ca.pem"));
  X509Ptr server = LoadCertificate(Path("server.pem"));

  EXPECT_EQ(VerifyError(ca.get(), server.get(), X509_PURPOSE_SSL_SERVER), "");
  EXPECT_NE(VerifyError(ca.get(), server.get(), X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_EQ(CertificateCommonName(Path("server.pem")).value(), "offsite-server");
  EXPECT_EQ(X509_check_ca(server.get()), 0);
  EXPECT_NE(X509_get0_authority_key_id(server.get()), nullptr);
  EXPECT_NEAR(DaysUntilExpiry(server.get()), kDefaultLeafValidityDays, 1);

  for (const char* host : {"localhost", "train.example.com"}) {
    EXPECT_EQ(X509_check_host(server.get(), host, 0, 0, nullptr), 1) << host;
  }
  for (const char* ip : {"127.0.0.1", "::1", "10.1.2.3", "fd00::7"}) {
    EXPECT_EQ(X509_check_ip_asc(server.get(), ip, 0), 1) << ip;
  }
  EXPECT_EQ(X509_check_host(server.get(), "other.example.com", 0, 0, nullptr), 0);
  EXPECT_EQ(X509_check_ip_asc(server.get(), "10.1.2.4", 0), 0);
  // An IP address goes in as an IP entry, not as a DNS name.
  EXPECT_EQ(X509_check_host(server.get(), "10.1.2.3", 0, 0, nullptr), 0);
}

TEST_F(CertsTest, OwnerCertificateIsAClientCertificate) {
  CertBundleOptions options;
  options.dir = dir_;
  options.owner_name = "model-owner";
  ASSERT_TRUE(InitCertificates(options).ok());
  X509Ptr ca = LoadCertificate(Path("ca.pem"));
  X509Ptr owner = LoadCertificate(Path("model-owner.pem"));
  EXPECT_EQ(VerifyError(ca.get(), owner.get(), X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_NE(VerifyError(ca.get(), owner.get(), X509_PURPOSE_SSL_SERVER), "");
  EXPECT_EQ(CertificateCommonName(Path("model-owner.pem")).value(), "model-owner");
  v1::AccessConfig access = Access();
  ASSERT_EQ(access.principals_size(), 1);
  EXPECT_EQ(access.principals(0).name(), "model-owner");
  EXPECT_EQ(access.principals(0).role(), v1::OWNER);
}

TEST_F(CertsTest, InitRefusesToReplaceAnExistingCa) {
  Init();
  std::string ca_before = ReadFile(Path("ca.pem")).value();
  CertBundleOptions options;
  options.dir = dir_;
  absl::Status status = InitCertificates(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr(Path("ca.key")));
  EXPECT_EQ(ReadFile(Path("ca.pem")).value(), ca_before);
}

TEST_F(CertsTest, InitRejectsBadServerName) {
  CertBundleOptions options;
  options.dir = dir_;
  options.server_names = {"ok.example.com", "bad,DNS:evil.com"};
  absl::Status status = InitCertificates(options);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("bad,DNS:evil.com"));
  EXPECT_FALSE(FileExists(Path("ca.key")));
}

TEST_F(CertsTest, IssuedClientCertificateVerifiesAndHasCommonName) {
  Init();
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "data-owner").ok());
  EXPECT_EQ(Mode(Path("alice.key")), 0600u);
  EXPECT_EQ(Mode(Path("alice.pem")), 0644u);
  X509Ptr ca = LoadCertificate(Path("ca.pem"));
  X509Ptr alice = LoadCertificate(Path("alice.pem"));
  EXPECT_EQ(VerifyError(ca.get(), alice.get(), X509_PURPOSE_SSL_CLIENT), "");
  EXPECT_EQ(CertificateCommonName(Path("alice.pem")).value(), "alice");
  X509_NAME* subject = X509_get_subject_name(alice.get());
  char organization[64];
  ASSERT_GT(
      X509_NAME_get_text_by_NID(subject, NID_organizationName, organization, sizeof(organization)),
      0);
  EXPECT_STREQ(organization, "Offsite");

  // The key file holds the private key of the certificate.
  std::string key_pem = ReadFile(Path("alice.key")).value();
  BIO* bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(X509_check_private_key(alice.get(), key), 1);
  EVP_PKEY_free(key);
}

TEST_F(CertsTest, IssuingTheSameNameTwiceIsRefused) {
  Init();
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "").ok());
  std::string first = ReadFile(Path("alice.pem")).value();
  absl::Status status = IssueClientCertificate(dir_, "alice", "");
  EXPECT_EQ(status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(status.message(), HasSubstr(Path("alice.pem")));
  EXPECT_EQ(ReadFile(Path("alice.pem")).value(), first);
  EXPECT_EQ(IssueClientCertificate(dir_, "owner", "owner").code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(CertsTest, BadNamesAndRolesAreRefused) {
  Init();
  for (const char* name : {"", "a/b", "../evil", "a b", "caf\xc3\xa9", "ca", "server"}) {
    absl::Status status = IssueClientCertificate(dir_, name, "");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_THAT(status.message(), HasSubstr(std::string("\"") + name + "\"")) << name;
  }
  absl::Status status = IssueClientCertificate(dir_, "bob", "admin");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("owner, data-owner, worker"));
  EXPECT_FALSE(FileExists(Path("bob.pem")));
  EXPECT_FALSE(FileExists(Path("bob.key")));
}

TEST_F(CertsTest, IssuingWithoutCaFailsNamingCaFile) {
  ASSERT_TRUE(MakeDirs(dir_).ok());
  absl::Status status = IssueClientCertificate(dir_, "alice", "");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr(Path("ca.pem")));
}

TEST_F(CertsTest, RolesAreAddedToAccessConfigOnce) {
  Init();
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "data-owner").ok());
  ASSERT_TRUE(IssueClientCertificate(dir_, "gpu-1", "worker").ok());
  ASSERT_TRUE(IssueClientCertificate(dir_, "no-role", "").ok());
  // Re-issuing after the certificate was removed keeps a single entry.
  std::filesystem::remove(Path("alice.pem"));
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "data-owner").ok());

  v1::AccessConfig access = Access();
  ASSERT_EQ(access.principals_size(), 3);
  EXPECT_EQ(access.principals(0).name(), "owner");
  EXPECT_EQ(access.principals(0).role(), v1::OWNER);
  EXPECT_EQ(access.principals(1).name(), "alice");
  EXPECT_EQ(access.principals(1).role(), v1::DATA_OWNER);
  EXPECT_EQ(access.principals(2).name(), "gpu-1");
  EXPECT_EQ(access.principals(2).role(), v1::WORKER);
}

TEST_F(CertsTest, ConflictingRoleIsRefusedBeforeWritingAnything) {
  Init();
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "worker").ok());
  std::filesystem::remove(Path("alice.pem"));
  std::filesystem::remove(Path("alice.key"));
  absl::Status status = IssueClientCertificate(dir_, "alice", "owner");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("\"alice\" with role worker"));
  EXPECT_FALSE(FileExists(Path("alice.pem")));
  EXPECT_FALSE(FileExists(Path("alice.key")));
}

TEST_F(CertsTest, NoAccessFileMeansNoneIsCreated) {
  Init();
  std::filesystem::remove(Path("access.textproto"));
  ASSERT_TRUE(IssueClientCertificate(dir_, "alice", "data-owner").ok());
  EXPECT_FALSE(FileExists(Path("access.textproto")));
}

TEST_F(CertsTest, CommonNameOfNonCertificateIsInvalidArgument) {
  ASSERT_TRUE(MakeDirs(dir_).ok());
  ASSERT_TRUE(WriteFileAtomic(Path("junk.pem"), "not a certificate").ok());
  absl::StatusOr<std::string> name = CertificateCommonName(Path("junk.pem"));
  EXPECT_EQ(name.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(name.status().message(), HasSubstr(Path("junk.pem")));
}

}  // namespace
}  // namespace offsite
