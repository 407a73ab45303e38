/*
 * Test-rig shim for Wine 8 only; never ship it. Rust's std (1.78+) imports ProcessPrng from
 * bcryptprimitives.dll, which Wine 8 does not have, so every Rust program dies at load time
 * (status c0000135, no output). This DLL, placed next to the .exe, provides that one export on
 * top of RtlGenRandom (SystemFunction036 in advapi32). Real Windows has the real DLL.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed it in chunks. */
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
