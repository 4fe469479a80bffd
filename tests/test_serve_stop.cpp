// Stop strings on streamed text (programs/serve_stop.c): what is sent, joined, is the text cut at
// the earliest stop string, however the text is split into pieces; nothing past a stop string is
// ever sent, and no piece sent ends inside a UTF-8 character.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

extern "C" {
#include "programs/serve_stop.h"
}

namespace {

// The plain answer: the earliest position where any stop string begins; at one position the
// shortest stop string, then the lowest index. cut is the text's size and index -1 when none.
struct Expected {
    size_t cut;
    int index;
};

Expected reference(const std::string &text, const std::vector<std::string> &stops) {
    for (size_t at = 0; at < text.size(); at++) {
        int best = -1;
        for (size_t k = 0; k < stops.size(); k++)
            if (text.compare(at, stops[k].size(), stops[k]) == 0 &&
                (best < 0 || stops[k].size() < stops[best].size()))
                best = (int)k;
        if (best >= 0) return {at, best};
    }
    return {text.size(), -1};
}

serve_stop *make(const std::vector<std::string> &stops) {
    std::vector<const char *> ptrs;
    std::vector<size_t> lengths;
    for (const std::string &s : stops) {
        ptrs.push_back(s.data());
        lengths.push_back(s.size());
    }
    serve_stop *s = nullptr;
    char err[256] = "";
    EXPECT_EQ(
        serve_stop_create(ptrs.data(), lengths.data(), (int)stops.size(), &s, err, sizeof err), 0)
        << err;
    return s;
}

// A UTF-8 character begins at text[at] (or at is the end): at is not inside one.
bool char_boundary(const std::string &text, size_t at) {
    return at >= text.size() || ((unsigned char)text[at] & 0xC0) != 0x80;
}

struct Streamed {
    std::string sent;          // everything returned, joined
    std::vector<size_t> sends; // the length of sent after each call that returned something
    int stopped = 0;           // what finish (or the feed that matched) said
    int which = -1;
    int feeds_until_stop = -1; // the number of pieces fed when a feed returned 1, else -1
};

// Feeds every piece (also after a match, which must return nothing), then finishes.
Streamed stream(serve_stop *s, const std::vector<std::string> &pieces) {
    Streamed r;
    for (size_t i = 0; i < pieces.size(); i++) {
        const char *text = nullptr;
        size_t n = 0;
        const int stop = serve_stop_feed(s, pieces[i].data(), pieces[i].size(), &text, &n);
        EXPECT_GE(stop, 0);
        if (r.feeds_until_stop >= 0) {
            EXPECT_EQ(stop, 1) << "a feed after the match";
            EXPECT_EQ(n, 0u) << "text after the match";
            continue;
        }
        if (n) {
            r.sent.append(text, n);
            r.sends.push_back(r.sent.size());
        }
        if (stop == 1) r.feeds_until_stop = (int)i + 1;
    }
    const char *text = nullptr;
    size_t n = 0;
    r.stopped = serve_stop_finish(s, &text, &n);
    if (r.feeds_until_stop >= 0) {
        EXPECT_EQ(n, 0u) << "finish gave text after the match";
    }
    r.sent.append(text, n);
    r.which = serve_stop_which(s);
    // later calls return nothing
    EXPECT_EQ(serve_stop_feed(s, "x", 1, &text, &n), r.stopped);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(serve_stop_finish(s, &text, &n), r.stopped);
    EXPECT_EQ(n, 0u);
    return r;
}

// Streams pieces and checks everything against the reference on their concatenation.
Streamed check(const std::vector<std::string> &stops, const std::vector<std::string> &pieces) {
    std::string text;
    for (const std::string &p : pieces) text += p;
    serve_stop *s = make(stops);
    if (!s) return {};
    Streamed r = stream(s, pieces);
    serve_stop_free(s);
    const Expected e = reference(text, stops);
    EXPECT_EQ(r.sent, text.substr(0, e.cut)) << "text '" << text << "'";
    EXPECT_EQ(r.stopped, e.index >= 0 ? 1 : 0) << "text '" << text << "'";
    EXPECT_EQ(r.which, e.index) << "text '" << text << "'";
    return r;
}

// The most stop strings there may be, each as long as may be, all but their last byte 'a'.
std::vector<std::string> largest_stops() {
    const char last[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZbcdefghijklmnopqrstuvwxyz0123456789+/-_";
    static_assert(sizeof last - 1 >= SERVE_STOP_MAX_STRINGS, "a last byte for each");
    std::vector<std::string> stops;
    for (int i = 0; i < SERVE_STOP_MAX_STRINGS; i++)
        stops.push_back(std::string(SERVE_STOP_MAX_BYTES - 1, 'a') + last[i]);
    return stops;
}

std::vector<std::string> bytes_of(const std::string &text) {
    std::vector<std::string> pieces;
    for (char c : text) pieces.push_back(std::string(1, c));
    return pieces;
}

TEST(ServeStop, NoStopStringsPassesEverythingThrough) {
    const Streamed r = check({}, {"Hello", ", ", "", "world"});
    EXPECT_EQ(r.sent, "Hello, world");
    EXPECT_EQ(r.sends, (std::vector<size_t>{5, 7, 12})); // nothing held back
}

TEST(ServeStop, StopSplitAcrossPiecesAtEveryOffset) {
    const std::string text = "Hello world, STOP here";
    for (size_t a = 0; a <= text.size(); a++)
        for (size_t b = a; b <= text.size(); b++) {
            const Streamed r =
                check({"STOP"}, {text.substr(0, a), text.substr(a, b - a), text.substr(b)});
            EXPECT_EQ(r.sent, "Hello world, ");
            EXPECT_EQ(r.which, 0);
        }
    const Streamed r = check({"STOP"}, bytes_of(text));
    EXPECT_EQ(r.feeds_until_stop, 17); // the byte that completes it, not later
}

TEST(ServeStop, StopInsideALongerPiece) {
    const Streamed r = check({"zz", "STOP"}, {"abcSTOPdefSTOP", "more"});
    EXPECT_EQ(r.sent, "abc");
    EXPECT_EQ(r.feeds_until_stop, 1);
    EXPECT_EQ(r.which, 1);
}

TEST(ServeStop, OverlappingStopStrings) {
    EXPECT_EQ(check({"ab", "b"}, {"xab"}).which, 0); // "ab" begins first
    EXPECT_EQ(check({"ab", "b"}, {"xb"}).which, 1);
    EXPECT_EQ(check({"b", "ab"}, {"x", "a", "b", "c"}).sent, "x");
    EXPECT_EQ(check({"aab", "ab"}, {"aab"}).which, 0);
    EXPECT_EQ(check({"ab", "aab"}, {"x", "aa", "b"}).sent, "x");
    EXPECT_EQ(check({"ab", "aab"}, {"xab"}).which, 0);
    // two at one position: the shorter is found first; equal strings: the lower index
    EXPECT_EQ(check({"abc", "ab"}, {"abc"}).which, 1);
    EXPECT_EQ(check({"ab", "ab"}, {"ab"}).which, 0);
}

TEST(ServeStop, AMatchWaitsForALongerStopThatBeginsEarlier) {
    // "bc" is complete after "abc", but "abcd" would begin earlier: nothing is final yet
    serve_stop *s = make({"abcd", "bc"});
    const char *text = nullptr;
    size_t n = 0;
    EXPECT_EQ(serve_stop_feed(s, "abc", 3, &text, &n), 0);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(serve_stop_which(s), -1);
    EXPECT_EQ(serve_stop_feed(s, "e", 1, &text, &n), 1); // not "abcd": "bc" it is
    EXPECT_EQ(std::string(text, n), "a");
    EXPECT_EQ(serve_stop_which(s), 1);
    serve_stop_free(s);

    EXPECT_EQ(check({"abcd", "bc"}, {"abc", "d"}).sent, "");
    EXPECT_EQ(check({"abcd", "bc"}, {"abc", "d"}).which, 0);
    // generation ends while it waits: the match found is the answer
    const Streamed r = check({"abcd", "bc"}, {"xabc"});
    EXPECT_EQ(r.sent, "xa");
    EXPECT_EQ(r.stopped, 1);
    EXPECT_EQ(r.feeds_until_stop, -1);
}

TEST(ServeStop, HeldBackPrefixIsReleasedWhenItIsNotAStop) {
    serve_stop *s = make({"STOP"});
    const char *text = nullptr;
    size_t n = 0;
    EXPECT_EQ(serve_stop_feed(s, "a ST", 4, &text, &n), 0);
    EXPECT_EQ(std::string(text, n), "a ");
    EXPECT_EQ(serve_stop_feed(s, "ART", 3, &text, &n), 0);
    EXPECT_EQ(std::string(text, n), "START");
    EXPECT_EQ(serve_stop_feed(s, " STO", 4, &text, &n), 0);
    EXPECT_EQ(std::string(text, n), " ");
    EXPECT_EQ(serve_stop_finish(s, &text, &n), 0); // ended for another reason: flushed
    EXPECT_EQ(std::string(text, n), "STO");
    EXPECT_EQ(serve_stop_which(s), -1);
    serve_stop_free(s);
}

TEST(ServeStop, MultiByteCharactersSplitAcrossPieces) {
    // 2, 3 and 4 bytes, and a stop string that begins with a multi-byte character
    const std::string text = "a\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xE2\x82\xAC"
                             "5!";
    for (const std::vector<std::string> &stops : {std::vector<std::string>{},
                                                  {"\xE2\x82\xAC"
                                                   "5"},
                                                  {"\xF0\x9F\x98\x81"}}) {
        const Streamed r = check(stops, bytes_of(text));
        for (size_t end : r.sends) EXPECT_TRUE(char_boundary(text, end)) << end;
    }
    EXPECT_EQ(check({"\xE2\x82\xAC"
                     "5"},
                    bytes_of(text))
                  .sent,
              "a\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 ");
    // an incomplete character at the end of the text is flushed by finish, as the detokenizer's
    // own finish would give it (U+FFFD there)
    const Streamed r = check({}, {"ab\xE2\x82"});
    EXPECT_EQ(r.sends, (std::vector<size_t>{2})); // the feed's; finish gave the rest
    EXPECT_EQ(r.sent, "ab\xE2\x82");
    // bytes that can never be whole are not held: a stray continuation, 0xFF
    EXPECT_EQ(check({}, {"a\x80", "b\xFF"}).sends, (std::vector<size_t>{2, 4}));
}

TEST(ServeStop, EmptyPieces) {
    serve_stop *s = make({"x"});
    const char *text = nullptr;
    size_t n = 1;
    EXPECT_EQ(serve_stop_feed(s, nullptr, 0, &text, &n), 0);
    EXPECT_EQ(n, 0u);
    serve_stop_free(s);
    check({"ab"}, {"", "", "a", "", "", "b", ""});
    check({"ab"}, {"", "a", "", "c", ""});
    check({}, {});
    check({"ab"}, {});
}

TEST(ServeStop, LimitsAreRefusedWithTheLimitNamed) {
    char err[256];
    serve_stop *s = nullptr;
    std::vector<const char *> many(SERVE_STOP_MAX_STRINGS + 1, "x");
    EXPECT_EQ(serve_stop_create(many.data(), nullptr, (int)many.size(), &s, err, sizeof err), -1);
    EXPECT_STREQ(err, "stop: 65 strings, at most 64 are allowed");
    EXPECT_EQ(s, nullptr);
    std::vector<const char *> tenk(10000, "x");
    EXPECT_EQ(serve_stop_create(tenk.data(), nullptr, 10000, &s, err, sizeof err), -1);

    const std::string long_stop(SERVE_STOP_MAX_BYTES + 1, 'a');
    const char *stops[] = {"ok", long_stop.c_str()};
    EXPECT_EQ(serve_stop_create(stops, nullptr, 2, &s, err, sizeof err), -1);
    EXPECT_STREQ(err, "stop[1]: 1025 bytes, at most 1024 are allowed");
    const char *empty[] = {"ok", ""};
    EXPECT_EQ(serve_stop_create(empty, nullptr, 2, &s, err, sizeof err), -1);
    EXPECT_STREQ(err, "stop[1]: an empty string");

    // the most there may be, all at once
    s = make(largest_stops());
    ASSERT_NE(s, nullptr);
    serve_stop_free(s);
}

TEST(ServeStop, LongOutputAgainstTheLargestStopsHoldsBackABoundedTail) {
    // every suffix of a run of 'a' could begin each stop string: the worst case for what is held
    serve_stop *s = make(largest_stops());
    ASSERT_NE(s, nullptr);
    const std::string token = "aaaa";
    const size_t n_tokens = 1 << 18; // 1 MiB of text
    size_t sent = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        const char *text = nullptr;
        size_t n = 0;
        ASSERT_EQ(serve_stop_feed(s, token.data(), token.size(), &text, &n), 0);
        sent += n;
        ASSERT_EQ((i + 1) * token.size() - sent,
                  std::min((i + 1) * token.size(), (size_t)SERVE_STOP_MAX_BYTES - 1));
    }
    const char *text = nullptr;
    size_t n = 0;
    EXPECT_EQ(serve_stop_feed(s, "B", 1, &text, &n), 1);
    EXPECT_EQ(sent + n, n_tokens * token.size() - (SERVE_STOP_MAX_BYTES - 1));
    EXPECT_EQ(serve_stop_which(s), 1);
    serve_stop_free(s);
}

// Random text from a small alphabet, split at random (empty pieces too), random stop strings
// from the same alphabet: the streamed answer is the reference's on the whole text.
TEST(ServeStop, RandomTextsAndSplitsMatchTheReference) {
    std::mt19937 rng(20261206);
    const std::vector<std::string> alphabets[] = {
        {"a", "b"}, {"a", "b", "c"}, {"a", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80"}};
    int stopped = 0;
    for (int trial = 0; trial < 6000; trial++) {
        const std::vector<std::string> &alphabet = alphabets[trial % 3];
        auto draw = [&](int max_chars) {
            std::string s;
            const int n = (int)(rng() % (unsigned)(max_chars + 1));
            for (int i = 0; i < n; i++) s += alphabet[rng() % alphabet.size()];
            return s;
        };
        std::vector<std::string> stops((size_t)(rng() % 5));
        for (std::string &s : stops) do
                s = draw(5);
            while (s.empty());
        const std::string text = draw(40);
        std::vector<std::string> pieces;
        for (size_t at = 0; at < text.size();) {
            const size_t n = std::min(text.size() - at, (size_t)(rng() % 6)); // 0: an empty piece
            pieces.push_back(text.substr(at, n));
            at += n;
        }
        SCOPED_TRACE("trial " + std::to_string(trial));
        const Streamed r = check(stops, pieces);
        stopped += r.stopped;
        // every piece sent ends between characters (the stop strings are whole UTF-8 too)
        for (size_t end : r.sends) ASSERT_TRUE(char_boundary(text, end)) << end;
        if (HasFailure()) break;
    }
    EXPECT_GT(stopped, 1000); // both outcomes are exercised
    EXPECT_LT(stopped, 5000);
}

} // namespace
