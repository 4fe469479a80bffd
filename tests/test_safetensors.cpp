// The safetensors reader: what a valid file gives back, and every kind of malformed file refused
// with a message that names the file and the tensor or field at fault.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

extern "C" {
#include "../loaders/safetensors.h"
}

namespace {

using cinfer_test::contains_all;
using cinfer_test::safetensors_bytes;
using cinfer_test::SafetensorsBuilder;
using cinfer_test::TempDir;

// Closes whatever st_open/st_parse returned when the test ends, pass or fail.
struct FileCloser {
    void operator()(st_file *file) const { st_close(file); }
};
using FileHandle = std::unique_ptr<st_file, FileCloser>;

// Any non-NULL value: the reader must overwrite *out, also on failure.
st_file *const kNotYetSet = reinterpret_cast<st_file *>(alignof(st_file));

// The bytes of a file in a heap block of exactly their size, so that AddressSanitizer sees any read
// past the end (a std::string would hide short overreads in its spare capacity).
std::unique_ptr<uint8_t[]> exact_copy(const std::string &bytes) {
    std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes.size()]);
    std::memcpy(copy.get(), bytes.data(), bytes.size());
    return copy;
}

// One reader entry point's verdict on a malformed input.
::testing::AssertionResult refused(const char *entry_point, cinfer_status got, const st_file *out,
                                   cinfer_status want, const std::string &name,
                                   std::initializer_list<std::string> parts) {
    const std::string message = cinfer_last_error();
    if (got != want)
        return ::testing::AssertionFailure() << entry_point << " returned status " << got
                                             << ", expected " << want << "; message: " << message;
    if (out != nullptr)
        return ::testing::AssertionFailure() << entry_point << " failed but left *out set";
    if (message.rfind(name + ": ", 0) != 0)
        return ::testing::AssertionFailure() << entry_point << ": the message should start with \""
                                             << name << ": \", got: " << message;
    return contains_all(message, parts) << " (from " << entry_point << ")";
}

// A malformed file must be refused the same way from memory (st_parse) and from disk (st_open):
// the given status, *out NULL, and a message that starts with the file's name and contains every
// one of parts.
::testing::AssertionResult rejects(const std::string &bytes,
                                   std::initializer_list<std::string> parts,
                                   cinfer_status want = CINFER_ERR_FORMAT) {
    auto copy = exact_copy(bytes);
    st_file *out = kNotYetSet;
    cinfer_status status = st_parse("memory.safetensors", copy.get(), bytes.size(), &out);
    FileHandle parsed(out == kNotYetSet ? nullptr : out);
    auto from_memory = refused("st_parse", status, out, want, "memory.safetensors", parts);
    if (!from_memory) return from_memory;

    TempDir dir;
    const std::string path = dir.file("bad.safetensors");
    cinfer_test::write_file(path, bytes);
    out = kNotYetSet;
    status = st_open(path.c_str(), &out);
    FileHandle opened(out == kNotYetSet ? nullptr : out);
    return refused("st_open", status, out, want, path, parts);
}

// A file whose header is `header` padded to 8 bytes and whose data buffer is `data_size` zeros.
std::string file_with_header(std::string header, size_t data_size) {
    header.resize((header.size() + 7) / 8 * 8, ' ');
    return safetensors_bytes(header, std::string(data_size, '\0'));
}

// One well-formed entry, for headers written by hand.
std::string entry(const std::string &name, const std::string &dtype, const std::string &shape,
                  const std::string &offsets) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
           ",\"data_offsets\":" + offsets + "}";
}

// Every dtype the reader knows, with the element size the safetensors format gives it.
struct DtypeCase {
    const char *name;
    size_t size;
};
const DtypeCase kDtypes[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                             {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};

std::string pattern_bytes(size_t n, int seed) {
    std::string bytes(n, '\0');
    for (size_t i = 0; i < n; i++) bytes[i] = (char)(i * 31 + (size_t)seed * 7 + 1);
    return bytes;
}

// ---- valid files --------------------------------------------------------------------------------

// Checks every tensor of `file` against what the builder was given, with `buffer` the start of
// the file's bytes (the mapping for st_open, the caller's bytes for st_parse).
void expect_round_trip(const st_file *file, const uint8_t *buffer, size_t header_size) {
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(file->n_tensors, (int)std::size(kDtypes) + 1);
    uint64_t offset = 0;
    for (size_t i = 0; i < std::size(kDtypes); i++) {
        SCOPED_TRACE(kDtypes[i].name);
        const std::string name = std::string("t.") + kDtypes[i].name;
        const st_tensor *t = st_find(file, name.c_str());
        ASSERT_NE(t, nullptr);
        EXPECT_STREQ(t->name, name.c_str());
        EXPECT_STREQ(ci_dtype_name(t->dtype), kDtypes[i].name);
        ASSERT_EQ(t->n_dims, 2);
        EXPECT_EQ(t->shape[0], 2);
        EXPECT_EQ(t->shape[1], (int64_t)i + 1);
        EXPECT_EQ(st_tensor_numel(t), 2 * ((int64_t)i + 1));
        const size_t nbytes = 2 * (i + 1) * kDtypes[i].size;
        EXPECT_EQ(t->begin, offset);
        EXPECT_EQ(t->end, offset + nbytes);
        EXPECT_EQ(t->data, buffer + 8 + header_size + offset);
        EXPECT_EQ(std::string(static_cast<const char *>(t->data), nbytes),
                  pattern_bytes(nbytes, (int)i));
        EXPECT_EQ(t->file, file);
        offset += nbytes;
    }
    const st_tensor *scalar = st_find(file, "scalar");
    ASSERT_NE(scalar, nullptr);
    EXPECT_EQ(scalar->n_dims, 0);
    EXPECT_EQ(st_tensor_numel(scalar), 1);
    EXPECT_EQ(file->data_size, offset + sizeof(float));

    EXPECT_STREQ(st_metadata(file, "format"), "pt");
    EXPECT_STREQ(st_metadata(file, "note"), "made by test_safetensors");
    EXPECT_EQ(st_metadata(file, "absent"), nullptr);
    EXPECT_EQ(st_find(file, "absent"), nullptr);
}

SafetensorsBuilder every_dtype() {
    SafetensorsBuilder builder;
    for (size_t i = 0; i < std::size(kDtypes); i++)
        builder.add(std::string("t.") + kDtypes[i].name, kDtypes[i].name, {2, (int64_t)i + 1},
                    pattern_bytes(2 * (i + 1) * kDtypes[i].size, (int)i));
    builder.add("scalar", "F32", {}, cinfer_test::bytes_of(std::vector<float>{1.5f}));
    builder.metadata("format", "pt").metadata("note", "made by test_safetensors");
    return builder;
}

TEST(Safetensors, ParsesEveryDtypeShapeOffsetAndMetadataFromMemory) {
    const SafetensorsBuilder builder = every_dtype();
    const std::string bytes = builder.bytes();
    auto copy = exact_copy(bytes);
    st_file *out = kNotYetSet;
    ASSERT_EQ(st_parse("memory.safetensors", copy.get(), bytes.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle file(out);
    expect_round_trip(file.get(), copy.get(), builder.header().size());
}

TEST(Safetensors, OpensEveryDtypeShapeOffsetAndMetadataFromDisk) {
    TempDir dir;
    const SafetensorsBuilder builder = every_dtype();
    builder.write(dir.file("all.safetensors"));
    st_file *out = kNotYetSet;
    ASSERT_EQ(st_open(dir.file("all.safetensors").c_str(), &out), CINFER_OK) << cinfer_last_error();
    FileHandle file(out);
    EXPECT_EQ(std::string(file->path), dir.file("all.safetensors"));
    expect_round_trip(file.get(), static_cast<const uint8_t *>(file->mapping),
                      builder.header().size());
}

TEST(Safetensors, FindsTensorsWrittenOutOfNameOrder) {
    SafetensorsBuilder builder;
    builder.add("zeta", "F32", {1}, pattern_bytes(4, 1))
        .add("alpha", "F32", {2}, pattern_bytes(8, 2))
        .add("mid", "U8", {3}, pattern_bytes(3, 3));
    const std::string bytes = builder.bytes();
    auto copy = exact_copy(bytes);
    st_file *out = kNotYetSet;
    ASSERT_EQ(st_parse("order.safetensors", copy.get(), bytes.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle file(out);
    for (const char *name : {"zeta", "alpha", "mid"}) {
        const st_tensor *t = st_find(file.get(), name);
        ASSERT_NE(t, nullptr) << name;
        EXPECT_STREQ(t->name, name);
    }
    EXPECT_EQ(st_find(file.get(), "alpha")->begin, 4u);
}

TEST(Safetensors, AcceptsHeaderPaddedWithSpaces) {
    std::string header = "{" + entry("w", "F32", "[2]", "[0,8]") + "}";
    header += std::string(133, ' ');  // not a multiple of 8: padding need not align anything
    const std::string bytes = safetensors_bytes(header, pattern_bytes(8, 0));
    auto copy = exact_copy(bytes);
    st_file *out = kNotYetSet;
    ASSERT_EQ(st_parse("padded.safetensors", copy.get(), bytes.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle file(out);
    const st_tensor *w = st_find(file.get(), "w");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->data, copy.get() + 8 + header.size());
}

TEST(Safetensors, AcceptsEmptyHeaderAndZeroElementTensors) {
    st_file *out = kNotYetSet;
    const std::string empty = safetensors_bytes("{}", "");
    auto empty_copy = exact_copy(empty);
    ASSERT_EQ(st_parse("empty.safetensors", empty_copy.get(), empty.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle no_tensors(out);
    EXPECT_EQ(no_tensors->n_tensors, 0);

    // An empty tensor takes no bytes, wherever its offsets point inside the buffer.
    const std::string bytes = file_with_header("{" + entry("a", "F32", "[0, 5]", "[0,0]") + "," +
                                                   entry("b", "F32", "[2]", "[0,8]") + "," +
                                                   entry("c", "BF16", "[0]", "[8,8]") + "}",
                                               8);
    auto copy = exact_copy(bytes);
    ASSERT_EQ(st_parse("zero.safetensors", copy.get(), bytes.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle file(out);
    EXPECT_EQ(file->n_tensors, 3);
    EXPECT_EQ(st_tensor_numel(st_find(file.get(), "a")), 0);
    EXPECT_EQ(st_tensor_numel(st_find(file.get(), "c")), 0);
}

TEST(Safetensors, AcceptsTheMostDimensionsSupported) {
    std::string dims = "[1";
    for (int i = 1; i < ST_MAX_DIMS; i++) dims += ",1";
    dims += "]";
    const std::string bytes = file_with_header("{" + entry("w", "U8", dims, "[0,1]") + "}", 1);
    auto copy = exact_copy(bytes);
    st_file *out = kNotYetSet;
    ASSERT_EQ(st_parse("dims.safetensors", copy.get(), bytes.size(), &out), CINFER_OK)
        << cinfer_last_error();
    FileHandle file(out);
    EXPECT_EQ(st_find(file.get(), "w")->n_dims, ST_MAX_DIMS);
}

// ---- the file as a whole ------------------------------------------------------------------------

TEST(Safetensors, RejectsEmptyFile) {
    EXPECT_TRUE(rejects("", {"0 bytes", "too short", "header length"}));
}

TEST(Safetensors, RejectsFileShorterThanTheLengthField) {
    EXPECT_TRUE(rejects(std::string("\x02\0\0\0\0", 5), {"5 bytes", "too short"}));
}

TEST(Safetensors, RejectsHeaderLengthBeyondTheFile) {
    std::string bytes = safetensors_bytes("{}", "");
    bytes[0] = 100;  // claims 100 header bytes; the file has 2
    EXPECT_TRUE(rejects(bytes, {"header length 100", "10 bytes", "truncated"}));
}

TEST(Safetensors, RejectsHeaderLengthOverTheBoundBeforeReadingIt) {
    // The file is tiny: a length over the bound must be refused for being over the bound, not
    // merely for running past the end (so a huge file could not make us parse gigabytes).
    for (uint64_t length : {(uint64_t)ST_MAX_HEADER_BYTES + 1, ~(uint64_t)0}) {
        std::string bytes = safetensors_bytes("{}", "");
        for (int i = 0; i < 8; i++) bytes[i] = (char)((length >> (8 * i)) & 0xff);
        EXPECT_TRUE(rejects(bytes, {std::to_string(length), "exceeds the limit",
                                    std::to_string(ST_MAX_HEADER_BYTES)}));
    }
    // The bound itself is allowed: this one fails only because the file is short.
    std::string at_bound = safetensors_bytes("{}", "");
    for (int i = 0; i < 8; i++) at_bound[i] = (char)((ST_MAX_HEADER_BYTES >> (8 * i)) & 0xff);
    EXPECT_TRUE(rejects(at_bound, {"runs past the end of the file"}));
}

TEST(Safetensors, RejectsTruncatedFile) {
    SafetensorsBuilder builder;
    builder.add("a", "F32", {4}, pattern_bytes(16, 0)).add("b", "F16", {8}, pattern_bytes(16, 1));
    std::string bytes = builder.bytes();
    bytes.resize(bytes.size() - 5);
    EXPECT_TRUE(rejects(bytes, {"tensor 'b'", "[16, 32]", "27 bytes", "truncated"}));
}

// ---- the header as JSON -------------------------------------------------------------------------

TEST(Safetensors, RejectsInvalidJson) {
    EXPECT_TRUE(rejects(file_with_header("{\"w\": {\"dtype\": \"F32\",", 0), {"not valid JSON"}));
    EXPECT_TRUE(rejects(file_with_header("{\"w\" 1}", 0), {"not valid JSON", "byte"}));
}

TEST(Safetensors, RejectsHeaderThatIsNotAnObject) {
    for (const char *header : {"[1, 2]", "\"text\"", "17", "null", " {}"})
        EXPECT_TRUE(rejects(file_with_header(header, 0), {"header must be a JSON object"}))
            << header;
    EXPECT_TRUE(rejects(safetensors_bytes("{", ""), {"header must be a JSON object"}));
}

TEST(Safetensors, RejectsBytesAfterTheJsonObject) {
    EXPECT_TRUE(rejects(file_with_header("{} x", 0), {"after the top-level value", "byte 3"}));
    EXPECT_TRUE(rejects(file_with_header("{}{}", 0), {"after the top-level value"}));
    EXPECT_TRUE(rejects(safetensors_bytes(std::string("{}\0\0\0\0\0\0", 8), ""),
                        {"after the top-level value"}));
}

TEST(Safetensors, RejectsEntryThatIsNotAnObject) {
    EXPECT_TRUE(
        rejects(file_with_header("{\"w\": [0, 4]}", 0), {"header entry 'w'", "must be an object"}));
}

// ---- one tensor's entry -------------------------------------------------------------------------

TEST(Safetensors, RejectsUnknownDtype) {
    for (const char *dtype : {"F8_E4M3", "Q4", "f32", ""})
        EXPECT_TRUE(rejects(file_with_header("{" + entry("w", dtype, "[4]", "[0,4]") + "}", 4),
                            {"tensor 'w'", std::string("dtype '") + dtype + "'", "expected"}))
            << dtype;
}

TEST(Safetensors, RejectsMissingDtype) {
    EXPECT_TRUE(rejects(file_with_header("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                        {"tensor 'w'", "'dtype'"}));
    EXPECT_TRUE(
        rejects(file_with_header("{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4),
                {"tensor 'w'", "'dtype'"}));
}

TEST(Safetensors, RejectsMissingShape) {
    EXPECT_TRUE(rejects(file_with_header("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4),
                        {"tensor 'w'", "'shape'"}));
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "4", "[0,4]") + "}", 4),
                        {"tensor 'w'", "'shape'"}));
}

TEST(Safetensors, RejectsMissingOrMalformedDataOffsets) {
    EXPECT_TRUE(rejects(file_with_header("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4),
                        {"tensor 'w'", "'data_offsets'", "[begin, end]"}));
    for (const char *offsets : {"[0]", "[0,4,8]", "[]", "{}", "[\"0\",4]"})
        EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "[1]", offsets) + "}", 4),
                            {"tensor 'w'", "'data_offsets'"}))
            << offsets;
}

TEST(Safetensors, RejectsNegativeFractionalOrHugeOffsets) {
    for (const char *offsets :
         {"[-4,0]", "[0,-4]", "[0,4.5]", "[0.5,4]", "[0,1e300]", "[0,18446744073709551616]"})
        EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "U8", "[4]", offsets) + "}", 4),
                            {"tensor 'w'", "'data_offsets' must be two non-negative integers"}))
            << offsets;
}

TEST(Safetensors, RejectsNegativeFractionalOrHugeDimensions) {
    for (const char *shape : {"[2,-2]", "[2,1.5]", "[2,1e300]", "[2,\"2\"]", "[2,null]"})
        EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "U8", shape, "[0,4]") + "}", 4),
                            {"tensor 'w'", "shape[1] must be a non-negative integer"}))
            << shape;
}

TEST(Safetensors, RejectsShapeWhoseByteCountOverflows) {
    // 2^31 · 2^31 · 2^31 elements of 4 bytes: the product wraps in 64 bits.
    const std::string huge = "[2147483648,2147483648,2147483648]";
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", huge, "[0,4]") + "}", 4),
                        {"tensor 'w'", "more than 2^64"}));
}

TEST(Safetensors, RejectsTooManyDimensions) {
    std::string dims = "[1";
    for (int i = 0; i < ST_MAX_DIMS; i++) dims += ",1";
    dims += "]";
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "U8", dims, "[0,1]") + "}", 1),
                        {"tensor 'w'", std::to_string(ST_MAX_DIMS + 1) + " dimensions",
                         "at most " + std::to_string(ST_MAX_DIMS)}));
}

TEST(Safetensors, RejectsBeginAfterEnd) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "[1]", "[8,4]") + "}", 8),
                        {"tensor 'w'", "[8, 4]", "end before"}));
}

TEST(Safetensors, RejectsByteCountThatDisagreesWithShapeAndDtype) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "[3]", "[0,8]") + "}", 8),
                        {"tensor 'w'", "hold 8 bytes", "F32", "[3]", "need 12"}));
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "BF16", "[2,2]", "[0,16]") + "}", 16),
                        {"tensor 'w'", "hold 16 bytes", "BF16", "[2, 2]", "need 8"}));
}

TEST(Safetensors, RejectsOffsetsPastTheDataBuffer) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "[4]", "[0,16]") + "}", 8),
                        {"tensor 'w'", "[0, 16]", "past the data buffer of 8 bytes"}));
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "U8", "[1]", "[4096,4097]") + "}", 8),
                        {"tensor 'w'", "past the data buffer"}));
}

// ---- the tensors together -----------------------------------------------------------------------

TEST(Safetensors, RejectsOverlappingRanges) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                             entry("b", "F32", "[2]", "[4,12]") + "}",
                                         12),
                        {"'a' and 'b' overlap", "[0, 8)", "[4, 12)"}));
    // Two names for the same bytes are an overlap too.
    EXPECT_TRUE(rejects(file_with_header("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                             entry("b", "U8", "[8]", "[0,8]") + "}",
                                         8),
                        {"overlap", "'a'", "'b'"}));
}

TEST(Safetensors, RejectsGapBetweenTensors) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                                             entry("b", "F32", "[2]", "[12,20]") + "}",
                                         20),
                        {"bytes [8, 12)", "belong to no tensor", "'b'"}));
    EXPECT_TRUE(rejects(file_with_header("{" + entry("a", "F32", "[2]", "[4,12]") + "}", 12),
                        {"bytes [0, 4)", "belong to no tensor", "'a'"}));
}

TEST(Safetensors, RejectsBytesAfterTheLastTensor) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("a", "F32", "[2]", "[0,8]") + "}", 12),
                        {"data buffer has 12 bytes", "end at byte 8"}));
    EXPECT_TRUE(rejects(file_with_header("{}", 1), {"data buffer has 1 bytes", "end at byte 0"}));
}

TEST(Safetensors, RejectsDuplicateTensorNames) {
    EXPECT_TRUE(rejects(file_with_header("{" + entry("w", "F32", "[2]", "[0,8]") + "," +
                                             entry("w", "F32", "[2]", "[8,16]") + "}",
                                         16),
                        {"tensor 'w' appears twice"}));
}

TEST(Safetensors, RejectsMetadataThatIsNotStringToString) {
    const std::string w = entry("w", "U8", "[1]", "[0,1]");
    EXPECT_TRUE(rejects(file_with_header("{\"__metadata__\":[\"pt\"]," + w + "}", 1),
                        {"'__metadata__' must be an object of strings"}));
    EXPECT_TRUE(rejects(file_with_header("{\"__metadata__\":{\"format\":1}," + w + "}", 1),
                        {"'__metadata__' entry 'format' must be a string"}));
    EXPECT_TRUE(rejects(file_with_header("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}," + w + "}", 1),
                        {"'__metadata__' entry 'a' must be a string"}));
    EXPECT_TRUE(rejects(file_with_header("{\"__metadata__\":{},\"__metadata__\":{}," + w + "}", 1),
                        {"'__metadata__' appears twice"}));
}

// ---- paths that are not files -------------------------------------------------------------------

TEST(Safetensors, RejectsDirectoryPath) {
    TempDir dir;
    st_file *out = kNotYetSet;
    EXPECT_EQ(st_open(dir.path.c_str(), &out), CINFER_ERR_IO);
    EXPECT_EQ(out, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {dir.path.string(), "not a regular file"}));
}

TEST(Safetensors, RejectsFifoWithoutWaitingForAWriter) {
    TempDir dir;
    const std::string path = dir.file("fifo.safetensors");
    ASSERT_EQ(mkfifo(path.c_str(), 0600), 0);
    st_file *out = kNotYetSet;
    alarm(10);  // a reader that waits for a writer would hang: make that a crash, not a stuck run
    const cinfer_status status = st_open(path.c_str(), &out);
    alarm(0);
    EXPECT_EQ(status, CINFER_ERR_IO);
    EXPECT_EQ(out, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {path, "not a regular file"}));
}

TEST(Safetensors, RejectsNonexistentPath) {
    TempDir dir;
    const std::string path = dir.file("missing.safetensors");
    st_file *out = kNotYetSet;
    EXPECT_EQ(st_open(path.c_str(), &out), CINFER_ERR_IO);
    EXPECT_EQ(out, nullptr);
    EXPECT_TRUE(contains_all(cinfer_last_error(), {path, "cannot open", "No such file"}));
}

}  // namespace
