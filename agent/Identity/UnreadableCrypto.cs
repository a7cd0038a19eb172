using System.Security.Cryptography;

namespace Weft.Identity;

/// <summary>
/// What .NET throws for certificates, keys and requests another party wrote that it cannot read: malformed
/// (CryptographicException, ArgumentException), or naming an algorithm .NET does not know or a curve OpenSSL does not
/// (NotSupportedException and its subclass PlatformNotSupportedException; both found by fuzzing, docs/faults.md).
/// Each is the input's fault, answered like any unreadable input, never a crash of the caller.
/// </summary>
internal static class UnreadableCrypto
{
    public static bool Is(Exception e) => e is CryptographicException or ArgumentException or NotSupportedException;
}
