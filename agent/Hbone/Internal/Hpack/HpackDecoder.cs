using System.Buffers;
using System.Text;

namespace Weft.Hbone.Internal.Hpack;

/// <summary>
/// HPACK decoder (RFC 7541) for one connection's header blocks. Every bound is checked before
/// anything is allocated: integers, string lengths, the header list size, and dynamic table size
/// updates against the size we advertised.
/// </summary>
internal sealed class HpackDecoder(int maxTableSize, int maxHeaderListSize)
{
    // Integers larger than this are never legitimate here and would risk overflow.
    private const int MaxInteger = (1 << 24) - 1;
    private const int MaxTableSizeUpdatesPerBlock = 2;

    private readonly HpackDynamicTable _table = new(maxTableSize);
    private readonly int _maxTableSize = maxTableSize;

    public int DynamicTableSize => _table.Size;
    public int DynamicTableCount => _table.Count;
    public (string Name, string Value) DynamicEntry(int index) => _table.Get(index);

    /// <summary>Decodes one complete header block, appending fields in order.</summary>
    /// <exception cref="HpackException">Malformed block (COMPRESSION_ERROR).</exception>
    /// <exception cref="HeaderListTooLargeException">Decoded list over the limit.</exception>
    public void Decode(ReadOnlySpan<byte> block, List<KeyValuePair<string, string>> headers)
    {
        int pos = 0;
        int listSize = 0;
        int sizeUpdates = 0;
        bool fieldSeen = false;
        while (pos < block.Length)
        {
            byte first = block[pos];
            string name;
            string value;
            if ((first & 0x80) != 0)
            {
                // Indexed header field (6.1).
                int index = ReadInteger(block, ref pos, 7);
                (name, value) = Lookup(index);
            }
            else if ((first & 0xC0) == 0x40)
            {
                // Literal with incremental indexing (6.2.1).
                int index = ReadInteger(block, ref pos, 6);
                name = index == 0 ? ReadString(block, ref pos) : Lookup(index).Name;
                value = ReadString(block, ref pos);
                _table.Add(name, value);
            }
            else if ((first & 0xE0) == 0x20)
            {
                // Dynamic table size update (6.3): only before the first field of a block.
                if (fieldSeen || ++sizeUpdates > MaxTableSizeUpdatesPerBlock)
                {
                    throw new HpackException("dynamic table size update after a header field");
                }
                int size = ReadInteger(block, ref pos, 5);
                if (size > _maxTableSize)
                {
                    throw new HpackException($"dynamic table size update {size} above {_maxTableSize}");
                }
                _table.SetMaxSize(size);
                continue;
            }
            else
            {
                // Literal without indexing (0000) or never indexed (0001) (6.2.2, 6.2.3).
                int index = ReadInteger(block, ref pos, 4);
                name = index == 0 ? ReadString(block, ref pos) : Lookup(index).Name;
                value = ReadString(block, ref pos);
            }
            fieldSeen = true;
            listSize += HpackDynamicTable.EntrySize(name, value);
            if (listSize > maxHeaderListSize)
            {
                throw new HeaderListTooLargeException(maxHeaderListSize);
            }
            headers.Add(new KeyValuePair<string, string>(name, value));
        }
    }

    private (string Name, string Value) Lookup(int index)
    {
        if (index == 0)
        {
            throw new HpackException("index 0");
        }
        if (index <= HpackStaticTable.Count)
        {
            return HpackStaticTable.Get(index);
        }
        int dynamicIndex = index - HpackStaticTable.Count;
        if (dynamicIndex > _table.Count)
        {
            throw new HpackException($"index {index} beyond the tables");
        }
        return _table.Get(dynamicIndex);
    }

    internal static int ReadInteger(ReadOnlySpan<byte> block, ref int pos, int prefixBits)
    {
        if (pos >= block.Length)
        {
            throw new HpackException("truncated integer");
        }
        int mask = (1 << prefixBits) - 1;
        int value = block[pos++] & mask;
        if (value < mask)
        {
            return value;
        }
        int shift = 0;
        while (true)
        {
            if (pos >= block.Length)
            {
                throw new HpackException("truncated integer");
            }
            byte b = block[pos++];
            value += (b & 0x7F) << shift;
            if (value > MaxInteger)
            {
                throw new HpackException("integer too large");
            }
            if ((b & 0x80) == 0)
            {
                return value;
            }
            shift += 7;
            if (shift > 21)
            {
                throw new HpackException("integer too long");
            }
        }
    }

    private string ReadString(ReadOnlySpan<byte> block, ref int pos)
    {
        if (pos >= block.Length)
        {
            throw new HpackException("truncated string");
        }
        bool huffman = (block[pos] & 0x80) != 0;
        int length = ReadInteger(block, ref pos, 7);
        if (length > block.Length - pos)
        {
            throw new HpackException("string longer than the block");
        }
        ReadOnlySpan<byte> raw = block.Slice(pos, length);
        pos += length;
        if (!huffman)
        {
            if (length > maxHeaderListSize)
            {
                throw new HeaderListTooLargeException(maxHeaderListSize);
            }
            return Encoding.Latin1.GetString(raw);
        }
        // The shortest Huffman code is 5 bits, so the decoded string is at most 8/5 of the input;
        // anything beyond the header list limit is refused before it is materialized.
        int capacity = Math.Min(length * 8 / 5 + 1, maxHeaderListSize + 1);
        byte[] rented = ArrayPool<byte>.Shared.Rent(capacity);
        try
        {
            int decoded = Huffman.Decode(raw, rented.AsSpan(0, capacity));
            if (decoded < 0 || decoded > maxHeaderListSize)
            {
                throw new HeaderListTooLargeException(maxHeaderListSize);
            }
            return Encoding.Latin1.GetString(rented, 0, decoded);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}
