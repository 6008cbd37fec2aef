#include "common/certs.h"

#include <google/protobuf/text_format.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/access_config.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "offsite/v1/config.pb.h"

namespace offsite {
namespace {

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpenSslDeleter<BIGNUM, BN_free>>;
using ExtensionPtr =
    std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION, X509_EXTENSION_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;

constexpr char kAccessFile[] = "access.textproto";
constexpr char kOrganization[] = "Offsite";
constexpr char kCaCommonName[] = "Offsite CA";
constexpr char kServerCommonName[] = "offsite-server";

// Drains OpenSSL's thread-local error queue into one line, so that errors do
// not leak into the next, unrelated OpenSSL call's report.
std::string OpenSslErrors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    absl::StrAppend(&text, text.empty() ? "" : "; ", buffer);
  }
  return text.empty() ? "no OpenSSL error recorded" : text;
}

absl::Status OpenSslInternal(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", OpenSslErrors()));
}

absl::Status ValidateClientName(const std::string& name) {
  bool valid = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
  if (!valid) {
    return absl::InvalidArgumentError(
        absl::StrCat("client name \"", name, "\" must match [A-Za-z0-9._-]+"));
  }
  if (name == "ca" || name == "server") {
    return absl::InvalidArgumentError(absl::StrCat("client name \"", name, "\" is reserved: its ",
                                                   name, ".pem and ", name,
                                                   ".key belong to the bundle"));
  }
  return absl::OkStatus();
}

bool IsIpAddress(const std::string& name) {
  ASN1_OCTET_STRING* ip = a2i_IPADDRESS(name.c_str());
  ERR_clear_error();
  bool parsed = ip != nullptr;
  ASN1_OCTET_STRING_free(ip);
  return parsed;
}

bool IsDnsName(const std::string& name) {
  if (name.empty() || name.size() > 253) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '*') {
      return false;
    }
  }
  return true;
}

// The subjectAltName value in OpenSSL's config syntax. Every name is checked
// first, so none can smuggle a ',' or ':' into the list.
absl::StatusOr<std::string> ServerAltNames(const std::vector<std::string>& extra_names) {
  std::vector<std::string> names = {"localhost", "127.0.0.1", "::1"};
  for (const std::string& name : extra_names) {
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  std::vector<std::string> entries;
  for (const std::string& name : names) {
    if (IsIpAddress(name)) {
      entries.push_back(absl::StrCat("IP:", name));
    } else if (IsDnsName(name)) {
      entries.push_back(absl::StrCat("DNS:", name));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("server name \"", name, "\" is neither an IP address nor a DNS name"));
    }
  }
  return absl::StrJoin(entries, ",");
}

absl::StatusOr<KeyPtr> GenerateKey() {
  KeyPtr key(EVP_EC_gen("prime256v1"));
  if (key == nullptr) return OpenSslInternal("cannot generate an EC P-256 key");
  return key;
}

// A certificate for `key` with subject CN=common_name, O=Offsite, a random
// serial and the given validity, to be signed by `issuer` (itself when null).
absl::StatusOr<X509Ptr> NewCertificate(const std::string& common_name, EVP_PKEY* key, X509* issuer,
                                       int validity_days) {
  if (validity_days <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("validity for certificate \"", common_name,
                                                   "\" must be > 0 days, got ", validity_days));
  }
  X509Ptr cert(X509_new());
  if (cert == nullptr) return OpenSslInternal("X509_new");
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return OpenSslInternal("RAND_bytes");
  BignumPtr serial_bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  const auto* cn = reinterpret_cast<const unsigned char*>(common_name.c_str());
  const auto* org = reinterpret_cast<const unsigned char*>(kOrganization);
  // notBefore an hour back: a peer whose clock runs a little slow must still
  // accept a certificate issued just now.
  if (serial_bn == nullptr ||
      BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr ||
      X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), validity_days, 0, nullptr) == nullptr ||
      X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, cn, -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_UTF8, org, -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer ? issuer : cert.get())) != 1 ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return OpenSslInternal(absl::StrCat("cannot fill in certificate \"", common_name, "\""));
  }
  return cert;
}

// Adds extension `nid` = `value` (OpenSSL config syntax, e.g. "critical,CA:TRUE").
absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, nullptr, nullptr, 0);
  ExtensionPtr extension(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str()));
  if (extension == nullptr || X509_add_ext(cert, extension.get(), -1) != 1) {
    return OpenSslInternal(absl::StrCat("cannot add ", OBJ_nid2sn(nid), " = ", value));
  }
  return absl::OkStatus();
}

absl::Status Sign(X509* cert, EVP_PKEY* issuer_key) {
  if (X509_sign(cert, issuer_key, EVP_sha256()) <= 0) {
    return OpenSslInternal("cannot sign certificate");
  }
  return absl::OkStatus();
}

absl::StatusOr<X509Ptr> IssueCa(EVP_PKEY* key, int validity_days) {
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr cert,
                           NewCertificate(kCaCommonName, key, nullptr, validity_days));
  OFFSITE_RETURN_IF_ERROR(
      AddExtension(cert.get(), nullptr, NID_basic_constraints, "critical,CA:TRUE"));
  OFFSITE_RETURN_IF_ERROR(
      AddExtension(cert.get(), nullptr, NID_key_usage, "critical,keyCertSign,cRLSign"));
  OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), nullptr, NID_subject_key_identifier, "hash"));
  OFFSITE_RETURN_IF_ERROR(Sign(cert.get(), key));
  return cert;
}

// A server (serverAuth, with `alt_names`) or client (clientAuth) certificate.
absl::StatusOr<X509Ptr> IssueLeaf(const std::string& common_name, EVP_PKEY* key,
                                  const char* extended_key_usage, const std::string& alt_names,
                                  int validity_days, X509* ca, EVP_PKEY* ca_key) {
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr cert, NewCertificate(common_name, key, ca, validity_days));
  OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), ca, NID_basic_constraints, "CA:FALSE"));
  OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), ca, NID_key_usage, "critical,digitalSignature"));
  OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), ca, NID_ext_key_usage, extended_key_usage));
  OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), ca, NID_subject_key_identifier, "hash"));
  OFFSITE_RETURN_IF_ERROR(
      AddExtension(cert.get(), ca, NID_authority_key_identifier, "keyid:always"));
  if (!alt_names.empty()) {
    OFFSITE_RETURN_IF_ERROR(AddExtension(cert.get(), ca, NID_subject_alt_name, alt_names));
  }
  OFFSITE_RETURN_IF_ERROR(Sign(cert.get(), ca_key));
  return cert;
}

// Runs a PEM_write_bio_* function into memory and returns the text.
template <typename WriteFn>
absl::StatusOr<std::string> ToPem(WriteFn write, const std::string& path) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || write(bio.get()) != 1) {
    return OpenSslInternal(absl::StrCat("cannot encode PEM for ", path));
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

absl::Status WriteCertificate(const std::string& path, X509* cert) {
  OFFSITE_ASSIGN_OR_RETURN(std::string pem,
                           ToPem([cert](BIO* bio) { return PEM_write_bio_X509(bio, cert); }, path));
  return WriteFileAtomic(path, pem, 0644);
}

absl::Status WritePrivateKey(const std::string& path, EVP_PKEY* key) {
  OFFSITE_ASSIGN_OR_RETURN(std::string pem, ToPem(
                                                [key](BIO* bio) {
                                                  return PEM_write_bio_PrivateKey(bio, key, nullptr,
                                                                                  nullptr, 0,
                                                                                  nullptr, nullptr);
                                                },
                                                path));
  return WriteFileAtomic(path, pem, 0600);
}

absl::StatusOr<BioPtr> ReadIntoBio(const std::string& path, std::string* storage) {
  OFFSITE_ASSIGN_OR_RETURN(*storage, ReadFile(path));
  BioPtr bio(BIO_new_mem_buf(storage->data(), static_cast<int>(storage->size())));
  if (bio == nullptr) return OpenSslInternal(absl::StrCat("cannot buffer ", path));
  return bio;
}

absl::StatusOr<X509Ptr> ReadCertificate(const std::string& path) {
  std::string pem;
  OFFSITE_ASSIGN_OR_RETURN(BioPtr bio, ReadIntoBio(path, &pem));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds no PEM certificate: ", OpenSslErrors()));
  }
  return cert;
}

absl::StatusOr<KeyPtr> ReadPrivateKey(const std::string& path) {
  std::string pem;
  OFFSITE_ASSIGN_OR_RETURN(BioPtr bio, ReadIntoBio(path, &pem));
  // A callback that supplies no passphrase: without one OpenSSL would prompt
  // on the terminal for an encrypted key, which a server must never do.
  pem_password_cb* no_passphrase = [](char*, int, int, void*) { return 0; };
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds no unencrypted PEM private key: ", OpenSslErrors()));
  }
  return key;
}

// Adds (name, role) to `config`. Returns false if that entry is already there;
// FailedPrecondition if `name` is listed with another role.
absl::StatusOr<bool> AddPrincipal(const std::string& path, const std::string& name, v1::Role role,
                                  v1::AccessConfig* config) {
  for (const v1::Principal& principal : config->principals()) {
    if (principal.name() != name) continue;
    if (principal.role() == role) return false;
    return absl::FailedPreconditionError(absl::StrCat(path, " already lists \"", name,
                                                      "\" with role ", RoleName(principal.role()),
                                                      ", not ", RoleName(role)));
  }
  v1::Principal* principal = config->add_principals();
  principal->set_name(name);
  principal->set_role(role);
  return true;
}

absl::StatusOr<v1::AccessConfig> LoadAccessConfigOrEmpty(const std::string& path) {
  if (!FileExists(path)) return v1::AccessConfig();
  return LoadAccessConfig(path);
}

absl::Status WriteAccessConfig(const std::string& path, const v1::AccessConfig& config) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(config, &text)) {
    return absl::InternalError(absl::StrCat("cannot print access configuration for ", path));
  }
  return WriteFileAtomic(path,
                         absl::StrCat("# proto-file: offsite/v1/config.proto\n"
                                      "# proto-message: offsite.v1.AccessConfig\n",
                                      text),
                         0644);
}

}  // namespace

absl::Status InitCertificates(const CertBundleOptions& options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("certificate directory is empty");
  OFFSITE_RETURN_IF_ERROR(ValidateClientName(options.owner_name));
  OFFSITE_ASSIGN_OR_RETURN(std::string alt_names, ServerAltNames(options.server_names));
  OFFSITE_RETURN_IF_ERROR(MakeDirs(options.dir, 0700));
  const std::string ca_key_path = JoinPath(options.dir, "ca.key");
  if (FileExists(ca_key_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(ca_key_path, " exists; refusing to replace an existing CA"));
  }
  const std::string access_path = JoinPath(options.dir, kAccessFile);
  OFFSITE_ASSIGN_OR_RETURN(v1::AccessConfig access, LoadAccessConfigOrEmpty(access_path));
  OFFSITE_ASSIGN_OR_RETURN(bool access_changed,
                           AddPrincipal(access_path, options.owner_name, v1::OWNER, &access));

  OFFSITE_ASSIGN_OR_RETURN(KeyPtr ca_key, GenerateKey());
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr ca, IssueCa(ca_key.get(), options.ca_validity_days));
  OFFSITE_ASSIGN_OR_RETURN(KeyPtr server_key, GenerateKey());
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr server,
                           IssueLeaf(kServerCommonName, server_key.get(), "serverAuth", alt_names,
                                     options.leaf_validity_days, ca.get(), ca_key.get()));
  OFFSITE_ASSIGN_OR_RETURN(KeyPtr owner_key, GenerateKey());
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr owner,
                           IssueLeaf(options.owner_name, owner_key.get(), "clientAuth", "",
                                     options.leaf_validity_days, ca.get(), ca_key.get()));

  const std::string& dir = options.dir;
  OFFSITE_RETURN_IF_ERROR(WriteCertificate(JoinPath(dir, "ca.pem"), ca.get()));
  OFFSITE_RETURN_IF_ERROR(WritePrivateKey(JoinPath(dir, "server.key"), server_key.get()));
  OFFSITE_RETURN_IF_ERROR(WriteCertificate(JoinPath(dir, "server.pem"), server.get()));
  OFFSITE_RETURN_IF_ERROR(
      WritePrivateKey(JoinPath(dir, options.owner_name + ".key"), owner_key.get()));
  OFFSITE_RETURN_IF_ERROR(
      WriteCertificate(JoinPath(dir, options.owner_name + ".pem"), owner.get()));
  if (access_changed) OFFSITE_RETURN_IF_ERROR(WriteAccessConfig(access_path, access));
  return WritePrivateKey(ca_key_path, ca_key.get());
}

absl::Status IssueClientCertificate(const std::string& dir, const std::string& name,
                                    const std::string& role, int validity_days) {
  OFFSITE_RETURN_IF_ERROR(ValidateClientName(name));
  v1::Role parsed_role = v1::ROLE_UNSPECIFIED;
  if (!role.empty()) {
    OFFSITE_ASSIGN_OR_RETURN(parsed_role, ParseRole(role));
  }
  const std::string cert_path = JoinPath(dir, name + ".pem");
  if (FileExists(cert_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(cert_path, " exists; refusing to overwrite a client certificate"));
  }
  const std::string ca_path = JoinPath(dir, "ca.pem");
  const std::string ca_key_path = JoinPath(dir, "ca.key");
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr ca, ReadCertificate(ca_path));
  OFFSITE_ASSIGN_OR_RETURN(KeyPtr ca_key, ReadPrivateKey(ca_key_path));
  if (X509_check_private_key(ca.get(), ca_key.get()) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        absl::StrCat(ca_key_path, " is not the private key of ", ca_path));
  }

  // Settle the access entry before writing anything, so a conflict leaves no
  // certificate behind.
  const std::string access_path = JoinPath(dir, kAccessFile);
  v1::AccessConfig access;
  bool access_changed = false;
  if (parsed_role != v1::ROLE_UNSPECIFIED && FileExists(access_path)) {
    OFFSITE_ASSIGN_OR_RETURN(access, LoadAccessConfig(access_path));
    OFFSITE_ASSIGN_OR_RETURN(access_changed, AddPrincipal(access_path, name, parsed_role, &access));
  }

  OFFSITE_ASSIGN_OR_RETURN(KeyPtr key, GenerateKey());
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr cert, IssueLeaf(name, key.get(), "clientAuth", "", validity_days,
                                                   ca.get(), ca_key.get()));
  // The key first: a missing <name>.pem is what lets a failed run be repeated.
  OFFSITE_RETURN_IF_ERROR(WritePrivateKey(JoinPath(dir, name + ".key"), key.get()));
  OFFSITE_RETURN_IF_ERROR(WriteCertificate(cert_path, cert.get()));
  if (access_changed) OFFSITE_RETURN_IF_ERROR(WriteAccessConfig(access_path, access));
  return absl::OkStatus();
}

absl::StatusOr<std::string> CertificateCommonName(const std::string& pem_path) {
  OFFSITE_ASSIGN_OR_RETURN(X509Ptr cert, ReadCertificate(pem_path));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) {
    return absl::NotFoundError(absl::StrCat(pem_path, " has no subject common name"));
  }
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  unsigned char* utf8 = nullptr;
  int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) {
    return OpenSslInternal(absl::StrCat("cannot decode the common name in ", pem_path));
  }
  std::string common_name(reinterpret_cast<char*>(utf8), static_cast<size_t>(length));
  OPENSSL_free(utf8);
  return common_name;
}

}  // namespace offsite
