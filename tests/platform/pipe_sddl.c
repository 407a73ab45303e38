/*
 * Prints the security descriptor of a named pipe and the SID of the calling account, for the
 * Windows smoke test (.ci/platforms.sh):
 *
 *   pipe_sddl.exe \\.\pipe\NAME
 *   user=S-1-5-21-...
 *   sddl=O:S-1-5-21-...D:P(A;;FA;;;S-1-5-21-...)
 *
 * Exit status 0 when both lines were printed, 1 otherwise (with the reason on stderr).
 */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>

static int fail(const char *what)
{
    fprintf(stderr, "pipe_sddl: %s failed: error %lu\n", what, (unsigned long)GetLastError());
    return 1;
}

int wmain(int argc, wchar_t **argv)
{
    HANDLE token, pipe;
    BYTE buf[1024];
    DWORD len = 0;
    LPWSTR sid_text = NULL, sddl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    DWORD rc;

    if (argc != 2) {
        fprintf(stderr, "usage: pipe_sddl.exe \\\\.\\pipe\\NAME\n");
        return 2;
    }
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token))
        return fail("OpenProcessToken");
    if (!GetTokenInformation(token, TokenUser, buf, sizeof buf, &len))
        return fail("GetTokenInformation");
    CloseHandle(token);
    if (!ConvertSidToStringSidW(((TOKEN_USER *)buf)->User.Sid, &sid_text))
        return fail("ConvertSidToStringSidW");
    wprintf(L"user=%ls\n", sid_text);
    LocalFree(sid_text);

    pipe = CreateFileW(argv[1], GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
    if (pipe == INVALID_HANDLE_VALUE)
        return fail("CreateFileW");
    rc = GetSecurityInfo(pipe, SE_KERNEL_OBJECT,
                         OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, NULL, NULL,
                         NULL, NULL, &sd);
    CloseHandle(pipe);
    if (rc != ERROR_SUCCESS) {
        SetLastError(rc);
        return fail("GetSecurityInfo");
    }
    if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd, SDDL_REVISION_1, OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, &sddl,
            NULL))
        return fail("ConvertSecurityDescriptorToStringSecurityDescriptorW");
    wprintf(L"sddl=%ls\n", sddl);
    LocalFree(sddl);
    LocalFree(sd);
    return 0;
}
