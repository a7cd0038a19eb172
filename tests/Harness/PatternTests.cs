using System.Security.Cryptography;
using Weft.Harness;

namespace Weft.Tests.Harness;

public sealed class PatternTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(Pattern.BlockSize)]
    [InlineData(Pattern.BlockSize + 1)]
    [InlineData(1_000_003)]
    public void Sha256_EqualsHashOfFilledBytes(int length)
    {
        var bytes = new byte[length];
        Pattern.Fill(bytes, 0);

        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(bytes)), Pattern.Sha256(length));
    }

    [Fact]
    public void Fill_InUnevenChunks_GivesTheSameStreamAsOneFill()
    {
        var whole = new byte[300_000];
        Pattern.Fill(whole, 0);
        var pieces = new byte[whole.Length];
        var offset = 0;
        foreach (var size in Enumerable.Repeat(new[] { 1, 7, 65_535, 65_537, 4096 }, 10).SelectMany(s => s))
        {
            var n = Math.Min(size, pieces.Length - offset);
            Pattern.Fill(pieces.AsSpan(offset, n), offset);
            offset += n;
        }

        Pattern.Fill(pieces.AsSpan(offset), offset);
        Assert.Equal(whole, pieces);
    }

    [Fact]
    public void Pattern_IsFixedAcrossProcesses_AndNotTrivial()
    {
        // xorshift64* from seed "WEFTpatt", little-endian (checked with python): peers in other languages can reproduce it
        Assert.Equal(Pattern.Sha256(Pattern.BlockSize), Convert.ToHexStringLower(SHA256.HashData(Pattern.Block.Span)));
        Assert.Equal("35c711f67b6d2723", Convert.ToHexStringLower(Pattern.Block.Span[..8]));
        Assert.True(Pattern.Block.Span.ToArray().Distinct().Count() > 250);
    }
}
