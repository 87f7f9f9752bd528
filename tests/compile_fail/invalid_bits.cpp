// Instantiated with HLWQ_TEST_BITS = 8 it must compile; with 0 or 9 it must not.
#include <hlwq/quantize.hpp>

#include <vector>

int main() {
#if defined(HLWQ_TEST_CODEBOOK) || HLWQ_TEST_BITS == 8
    static_assert(hlwq::lloyd_max<HLWQ_TEST_BITS>::levels > 0);
#endif
#if defined(HLWQ_TEST_PACKER) || HLWQ_TEST_BITS == 8
    static_assert(hlwq::packer<HLWQ_TEST_BITS>::packed_bytes(32) > 0);
#endif
#if defined(HLWQ_TEST_QUANTIZE) || HLWQ_TEST_BITS == 8
    std::vector<float> w(128, 1.0f);
    return hlwq::quantize<HLWQ_TEST_BITS>(w, 1, 128).bits == HLWQ_TEST_BITS ? 0 : 1;
#else
    return 0;
#endif
}
