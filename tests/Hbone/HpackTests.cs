using System.Buffers;
using System.Security.Cryptography;
using System.Text;
using Weft.Hbone.Internal.Hpack;

namespace Weft.Tests.Hbone;

/// <summary>HPACK against the worked examples of RFC 7541 Appendix C, plus the bounds a hostile peer probes.</summary>
public class HpackTests
{
    private static List<KeyValuePair<string, string>> Decode(HpackDecoder decoder, string hex)
    {
        var headers = new List<KeyValuePair<string, string>>();
        decoder.Decode(Convert.FromHexString(hex), headers);
        return headers;
    }

    private static KeyValuePair<string, string> H(string name, string value) => new(name, value);

    private static void AssertTable(HpackDecoder decoder, int size, params (string Name, string Value)[] entries)
    {
        Assert.Equal(size, decoder.DynamicTableSize);
        Assert.Equal(entries.Length, decoder.DynamicTableCount);
        for (int i = 0; i < entries.Length; i++)
        {
            Assert.Equal(entries[i], decoder.DynamicEntry(i + 1));
        }
    }

    [Theory]
    [InlineData(5, 10, "0a")]        // C.1.1
    [InlineData(5, 1337, "1f9a0a")]  // C.1.2
    [InlineData(8, 42, "2a")]        // C.1.3
    public void Integer_RoundTripsTheAppendixC1Examples(int prefix, int value, string hex)
    {
        var output = new ArrayBufferWriter<byte>();
        Weft.Hbone.Internal.Hpack.HpackEncoder.WriteInteger(output, 0, prefix, value);
        Assert.Equal(hex, Convert.ToHexString(output.WrittenSpan).ToLowerInvariant());
        int pos = 0;
        Assert.Equal(value, HpackDecoder.ReadInteger(Convert.FromHexString(hex), ref pos, prefix));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Requests_AppendixC3AndC4_DecodeWithTheDynamicTable(bool huffman)
    {
        string[] blocks = huffman
            ? ["828684418cf1e3c2e5f23a6ba0ab90f4ff", "828684be5886a8eb10649cbf", "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"]
            : ["828684410f7777772e6578616d706c652e636f6d", "828684be58086e6f2d6361636865", "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"];
        var decoder = new HpackDecoder(4096, 16384);

        Assert.Equal([H(":method", "GET"), H(":scheme", "http"), H(":path", "/"), H(":authority", "www.example.com")], Decode(decoder, blocks[0]));
        AssertTable(decoder, 57, (":authority", "www.example.com"));

        Assert.Equal([H(":method", "GET"), H(":scheme", "http"), H(":path", "/"), H(":authority", "www.example.com"), H("cache-control", "no-cache")], Decode(decoder, blocks[1]));
        AssertTable(decoder, 110, ("cache-control", "no-cache"), (":authority", "www.example.com"));

        Assert.Equal([H(":method", "GET"), H(":scheme", "https"), H(":path", "/index.html"), H(":authority", "www.example.com"), H("custom-key", "custom-value")], Decode(decoder, blocks[2]));
        AssertTable(decoder, 164, ("custom-key", "custom-value"), ("cache-control", "no-cache"), (":authority", "www.example.com"));
    }

    [Fact]
    public void Responses_AppendixC5_EvictOldestEntriesFromA256ByteTable()
    {
        var decoder = new HpackDecoder(256, 16384);
        Decode(decoder, "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d");
        AssertTable(decoder, 222, ("location", "https://www.example.com"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("cache-control", "private"), (":status", "302"));

        Assert.Equal([H(":status", "307"), H("cache-control", "private"), H("date", "Mon, 21 Oct 2013 20:13:21 GMT"), H("location", "https://www.example.com")],
            Decode(decoder, "4803333037c1c0bf"));
        AssertTable(decoder, 222, (":status", "307"), ("location", "https://www.example.com"), ("date", "Mon, 21 Oct 2013 20:13:21 GMT"), ("cache-control", "private"));

        var third = Decode(decoder, "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31");
        Assert.Equal(H("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"), third[^1]);
        AssertTable(decoder, 215, ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"), ("content-encoding", "gzip"), ("date", "Mon, 21 Oct 2013 20:13:22 GMT"));
    }

    [Fact]
    public void Huffman_RoundTripsEveryByteValue()
    {
        byte[] all = Enumerable.Range(0, 256).Select(i => (byte)i).Concat(RandomNumberGenerator.GetBytes(1000)).ToArray();
        byte[] encoded = new byte[Huffman.EncodedLength(all)];
        Assert.Equal(encoded.Length, Huffman.Encode(all, encoded));
        byte[] decoded = new byte[all.Length];
        Assert.Equal(all.Length, Huffman.Decode(encoded, decoded));
        Assert.Equal(all, decoded);
    }

    [Fact]
    public void Huffman_AppendixC4String_EncodesToTheRfcBytes()
    {
        byte[] text = Encoding.ASCII.GetBytes("www.example.com");
        byte[] encoded = new byte[Huffman.EncodedLength(text)];
        Huffman.Encode(text, encoded);
        Assert.Equal("f1e3c2e5f23a6ba0ab90f4ff", Convert.ToHexString(encoded).ToLowerInvariant());
    }

    [Theory]
    [InlineData("f1e3c2e5f23a6ba0ab90f4fe")]      // padding not all ones
    [InlineData("f1e3c2e5f23a6ba0ab90f4ffff")]    // more than 7 bits of padding
    [InlineData("fffffffc")]                      // EOS (30 ones) inside the string
    public void Huffman_BadPaddingOrEos_IsACompressionError(string hex)
    {
        Assert.Throws<HpackException>(() => Huffman.Decode(Convert.FromHexString(hex), new byte[64]));
    }

    [Fact]
    public void Encoder_OutputDecodesToTheSameFields()
    {
        var fields = new List<KeyValuePair<string, string>>
        {
            H(":method", "CONNECT"), H(":authority", "10.244.2.7:8080"), H(":status", "200"),
            H("forwarded", "for=\"10.244.1.2:51234\""), H("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            H("x-odd", "\u00ff\u0001 bytes"), H("empty", ""),
        };
        var output = new ArrayBufferWriter<byte>();
        Weft.Hbone.Internal.Hpack.HpackEncoder.Encode(fields, output);
        var decoder = new HpackDecoder(4096, 16384);
        var decoded = new List<KeyValuePair<string, string>>();
        decoder.Decode(output.WrittenSpan, decoded);
        Assert.Equal(fields, decoded);
        Assert.Equal(0, decoder.DynamicTableCount);
        Assert.Contains((byte)0x88, output.WrittenSpan.ToArray()); // :status 200 went out as static index 8
    }

    [Theory]
    [InlineData("80", "index 0")]
    [InlineData("be", "index beyond the tables")]                  // 62 with an empty dynamic table
    [InlineData("3fe21f", "size update above the limit")]          // 4096 + 1
    [InlineData("823f00", "size update after a field")]
    [InlineData("0f", "truncated integer")]
    [InlineData("0fffffffff0f", "integer too large")]
    [InlineData("000a61", "string longer than the block")]
    public void Decoder_MalformedBlocks_AreCompressionErrors(string hex, string why)
    {
        var decoder = new HpackDecoder(4096, 16384);
        var error = Assert.Throws<HpackException>(() => decoder.Decode(Convert.FromHexString(hex), []));
        Assert.False(string.IsNullOrEmpty(error.Message), why);
    }

    [Fact]
    public void Decoder_TableSizeUpdate_ShrinksAndEvicts()
    {
        var decoder = new HpackDecoder(4096, 16384);
        Decode(decoder, "828684410f7777772e6578616d706c652e636f6d");
        Assert.Equal(1, decoder.DynamicTableCount);
        Decode(decoder, "2082"); // size update to 0, then :method GET
        Assert.Equal(0, decoder.DynamicTableCount);
        Assert.Throws<HpackException>(() => Decode(decoder, "be")); // the entry is gone
    }

    [Fact]
    public void Decoder_HeaderListOverTheLimit_IsRefused()
    {
        var output = new ArrayBufferWriter<byte>();
        for (int i = 0; i < 40; i++)
        {
            Weft.Hbone.Internal.Hpack.HpackEncoder.EncodeField($"x-field-{i}", new string('v', 500), output);
        }
        var decoder = new HpackDecoder(4096, 16384);
        Assert.Throws<HeaderListTooLargeException>(() => decoder.Decode(output.WrittenSpan, []));
    }

    [Fact]
    public void Decoder_IndexedRepeats_CountAgainstTheListLimitWithoutBigInput()
    {
        // One 4000-byte entry inserted, then referenced again and again: small input, large decoded list.
        var output = new ArrayBufferWriter<byte>();
        output.Write<byte>([0x40]);
        Weft.Hbone.Internal.Hpack.HpackEncoder.WriteString(output, "x-big");
        Weft.Hbone.Internal.Hpack.HpackEncoder.WriteString(output, new string('a', 4000));
        for (int i = 0; i < 10; i++)
        {
            output.Write<byte>([0xBE]); // dynamic index 62
        }
        var decoder = new HpackDecoder(4096, 16384);
        Assert.Throws<HeaderListTooLargeException>(() => decoder.Decode(output.WrittenSpan, []));
    }
}
