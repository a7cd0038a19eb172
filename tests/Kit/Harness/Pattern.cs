using System.Collections.Concurrent;
using System.Security.Cryptography;

namespace Weft.Harness;

/// <summary>
/// The deterministic byte stream test peers send: one 64 KiB block from a fixed seed, repeated.
/// Byte i of any stream is Block[i mod 64 KiB], so a sender, a receiver and the test can all compute
/// the SHA-256 of the first N bytes without storing them. 64 KiB is not a multiple of any TLS or
/// HTTP/2 frame size Weft uses, so a proxy that drops, repeats or reorders a chunk changes the hash.
/// </summary>
internal static class Pattern
{
    public const int BlockSize = 64 * 1024;

    private static readonly byte[] BlockBytes = MakeBlock();
    private static readonly ConcurrentDictionary<long, string> Hashes = new();

    /// <summary>One period of the pattern (read-only: senders send slices of it directly).</summary>
    public static ReadOnlyMemory<byte> Block => BlockBytes;

    /// <summary>Writes the pattern bytes at stream offsets [offset, offset + destination.Length).</summary>
    public static void Fill(Span<byte> destination, long offset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        var position = (int)(offset % BlockSize);
        while (!destination.IsEmpty)
        {
            var count = Math.Min(BlockSize - position, destination.Length);
            BlockBytes.AsSpan(position, count).CopyTo(destination);
            destination = destination[count..];
            position = 0;
        }
    }

    /// <summary>Lowercase hex SHA-256 of the first <paramref name="length"/> pattern bytes.</summary>
    public static string Sha256(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return Hashes.GetOrAdd(length, static length =>
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            for (var remaining = length; remaining > 0; remaining -= BlockSize)
            {
                hash.AppendData(BlockBytes, 0, (int)Math.Min(remaining, BlockSize));
            }

            return Convert.ToHexStringLower(hash.GetHashAndReset());
        });
    }

    private static byte[] MakeBlock()
    {
        // xorshift64*: fixed seed, no dependency on any library's random generator staying the same
        var block = new byte[BlockSize];
        var state = 0x5745_4654_7061_7474UL; // "WEFTpatt"
        for (var i = 0; i < block.Length; i += 8)
        {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(block.AsSpan(i), state * 0x2545_F491_4F6C_DD1DUL);
        }

        return block;
    }
}
