namespace Weft.Hbone.Internal.Hpack;

/// <summary>
/// HPACK Huffman coding (RFC 7541 section 5.2). Decoding walks a binary tree built once from
/// <see cref="HuffmanTable"/>; header blocks are small, so a bit-at-a-time walk is plenty and easy to
/// check against the padding rules (at most 7 bits, all ones, never EOS).
/// </summary>
internal static class Huffman
{
    // Node i has children _tree[2i] (bit 0) and _tree[2i+1] (bit 1): a positive value is the index of
    // the next inner node, a negative value -(symbol+1) is a leaf, 0 means no code (never reached in a
    // complete code).
    private static readonly int[] Tree = BuildTree();

    private static int[] BuildTree()
    {
        var tree = new int[2 * 512];
        int nextNode = 1;
        ReadOnlySpan<uint> codes = HuffmanTable.Codes;
        ReadOnlySpan<byte> lengths = HuffmanTable.Lengths;
        for (int symbol = 0; symbol <= HuffmanTable.EndOfString; symbol++)
        {
            uint code = codes[symbol];
            int length = lengths[symbol];
            int node = 0;
            for (int bit = length - 1; bit >= 0; bit--)
            {
                int slot = 2 * node + (int)((code >> bit) & 1);
                if (bit == 0)
                {
                    tree[slot] = -(symbol + 1);
                }
                else
                {
                    if (tree[slot] == 0)
                    {
                        tree[slot] = nextNode++;
                    }
                    node = tree[slot];
                }
            }
        }
        return tree;
    }

    /// <summary>Decodes <paramref name="source"/> into <paramref name="destination"/>; returns the byte count, or -1 when it does not fit.</summary>
    /// <exception cref="HpackException">EOS inside the string or bad padding.</exception>
    public static int Decode(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        int written = 0;
        int node = 0;
        int bitsSinceSymbol = 0;
        bool allOnesSinceSymbol = true;
        foreach (byte b in source)
        {
            for (int bit = 7; bit >= 0; bit--)
            {
                int value = (b >> bit) & 1;
                int next = Tree[2 * node + value];
                bitsSinceSymbol++;
                allOnesSinceSymbol &= value == 1;
                if (next < 0)
                {
                    int symbol = -next - 1;
                    if (symbol == HuffmanTable.EndOfString)
                    {
                        throw new HpackException("Huffman string contains EOS");
                    }
                    if (written == destination.Length)
                    {
                        return -1;
                    }
                    destination[written++] = (byte)symbol;
                    node = 0;
                    bitsSinceSymbol = 0;
                    allOnesSinceSymbol = true;
                }
                else
                {
                    node = next;
                }
            }
        }
        // Padding is the most significant bits of EOS: strictly fewer than 8, all ones.
        if (bitsSinceSymbol > 7 || !allOnesSinceSymbol)
        {
            throw new HpackException("invalid Huffman padding");
        }
        return written;
    }

    public static int EncodedLength(ReadOnlySpan<byte> source)
    {
        long bits = 0;
        ReadOnlySpan<byte> lengths = HuffmanTable.Lengths;
        foreach (byte b in source)
        {
            bits += lengths[b];
        }
        return (int)((bits + 7) / 8);
    }

    /// <summary>Encodes into <paramref name="destination"/>, which must hold <see cref="EncodedLength"/> bytes.</summary>
    public static int Encode(ReadOnlySpan<byte> source, Span<byte> destination)
    {
        ReadOnlySpan<uint> codes = HuffmanTable.Codes;
        ReadOnlySpan<byte> lengths = HuffmanTable.Lengths;
        ulong accumulator = 0;
        int pending = 0;
        int written = 0;
        foreach (byte b in source)
        {
            accumulator = (accumulator << lengths[b]) | codes[b];
            pending += lengths[b];
            while (pending >= 8)
            {
                pending -= 8;
                destination[written++] = (byte)(accumulator >> pending);
            }
        }
        if (pending > 0)
        {
            // Pad with the high bits of EOS (all ones).
            destination[written++] = (byte)((accumulator << (8 - pending)) | (0xFFu >> pending));
        }
        return written;
    }
}
