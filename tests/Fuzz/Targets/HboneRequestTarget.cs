using System.Net;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.Hpack;
using Weft.Proxy;

namespace Weft.Fuzz;

/// <summary>
/// One HPACK header block, as a CONNECT request or its response: decoded, checked by the HBONE request rules
/// (pseudo-headers, field names and values, <c>:authority</c>), then the authority and <c>forwarded</c> read
/// and decided the way the inbound proxy does. Decoded twice with one decoder, so the dynamic table a first
/// block leaves behind is what the second reads.
/// </summary>
internal sealed class HboneRequestTarget : IFuzzTarget
{
    public string Name => "hbone-request";

    public string Description => "an HPACK block as a CONNECT request and response: header rules, :authority, forwarded";

    public void Run(ReadOnlySpan<byte> input)
    {
        var decoder = new HpackDecoder(4096, 16_384);
        var fields = new List<KeyValuePair<string, string>>();
        for (var round = 0; round < 2; round++)
        {
            fields.Clear();
            try
            {
                decoder.Decode(input, fields);
            }
            catch (Exception e) when (e is HpackException or HeaderListTooLargeException)
            {
                return;
            }

            if (HeaderRules.ValidateConnectRequest(fields, out var authority, out var regular) is null)
            {
                var target = IPEndPoint.TryParse(authority, out var parsed) ? parsed : null;
                _ = PodProxy.ForwardedFor(regular);
                _ = InboundDecision.Connect(FuzzWorld.Snapshot, FuzzWorld.Pod, authority, target, FuzzWorld.Peer, IPAddress.Loopback, FuzzWorld.Guard);
            }

            _ = HeaderRules.ValidateResponse(fields, out _);
        }
    }

    public IEnumerable<(string Name, byte[] Content)> Seeds()
    {
        yield return ("connect", Http2ConnectionTarget.Hpack([(":method", "CONNECT"), (":authority", "10.244.2.2:8080")]));
        yield return ("connect-forwarded", Http2ConnectionTarget.Hpack([(":method", "CONNECT"), (":authority", "[fd00::2:2]:8080"),
            ("forwarded", "for=\"[fd00::1:2]:40000\";proto=http"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]));
        yield return ("connect-bad", Http2ConnectionTarget.Hpack([(":authority", "10.244.2.2:8080"), (":method", "CONNECT"), ("te", "gzip"), (":path", "/")]));
        yield return ("response", Http2ConnectionTarget.Hpack([(":status", "200"), ("server", "weft")]));
    }
}
