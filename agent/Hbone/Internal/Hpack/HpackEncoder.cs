using System.Buffers;
using System.Text;

namespace Weft.Hbone.Internal.Hpack;

/// <summary>
/// HPACK encoder that never inserts into the dynamic table: exact static matches are indexed, other
/// fields are literals without indexing (static name index where there is one), strings Huffman coded
/// when that is shorter. Stateless, so header blocks of different streams need no ordering beyond
/// being written whole, and a peer's SETTINGS_HEADER_TABLE_SIZE never matters.
/// </summary>
internal static class HpackEncoder
{
    public static void Encode(IEnumerable<KeyValuePair<string, string>> headers, IBufferWriter<byte> output)
    {
        foreach (var (name, value) in headers)
        {
            EncodeField(name, value, output);
        }
    }

    public static void EncodeField(string name, string value, IBufferWriter<byte> output)
    {
        int index = HpackStaticTable.Find(name, value, out bool valueMatches);
        if (valueMatches)
        {
            WriteInteger(output, 0x80, 7, index);
            return;
        }
        WriteInteger(output, 0x00, 4, index);
        if (index == 0)
        {
            WriteString(output, name);
        }
        WriteString(output, value);
    }

    public static void WriteInteger(IBufferWriter<byte> output, byte firstByteFlags, int prefixBits, int value)
    {
        Span<byte> span = output.GetSpan(8);
        int mask = (1 << prefixBits) - 1;
        int n = 0;
        if (value < mask)
        {
            span[n++] = (byte)(firstByteFlags | value);
        }
        else
        {
            span[n++] = (byte)(firstByteFlags | mask);
            value -= mask;
            while (value >= 0x80)
            {
                span[n++] = (byte)((value & 0x7F) | 0x80);
                value >>= 7;
            }
            span[n++] = (byte)value;
        }
        output.Advance(n);
    }

    public static void WriteString(IBufferWriter<byte> output, string text)
    {
        int rawLength = Encoding.Latin1.GetByteCount(text);
        byte[] rented = ArrayPool<byte>.Shared.Rent(rawLength);
        try
        {
            Span<byte> raw = rented.AsSpan(0, Encoding.Latin1.GetBytes(text, rented));
            int huffmanLength = Huffman.EncodedLength(raw);
            if (huffmanLength < rawLength)
            {
                WriteInteger(output, 0x80, 7, huffmanLength);
                int written = Huffman.Encode(raw, output.GetSpan(huffmanLength));
                output.Advance(written);
            }
            else
            {
                WriteInteger(output, 0x00, 7, rawLength);
                raw.CopyTo(output.GetSpan(rawLength));
                output.Advance(rawLength);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}
