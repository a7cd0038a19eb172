using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace Weft.Harness;

/// <summary>
/// `weft-kit app ...`: the test workload that runs inside pods. Every result is one JSON line on stdout,
/// printed as it happens, so tests can follow a run while it is still going.
/// <code>
/// weft-kit app serve --port P [--bind ADDR] [--mode hash|echo|reset] [--reply-bytes N]
/// weft-kit app send  --to HOST:PORT --bytes N [--connections C] [--concurrency K] [--hold-ms MS]
///                [--expect-reply-bytes M] [--timeout-ms T] [--rate R] [--quiet 1] [--progress-seconds S]
/// weft-kit app rr    --to HOST:PORT [--size 1024] [--count N] [--warmup W]
/// weft-kit app rr    --to HOST:PORT --rate R [--connections C] [--seconds S] [--size 1024]
/// weft-kit app hold  --to HOST:PORT --connections N [--concurrency K] [--exchange-bytes B] [--stdin watch|ignore]
/// weft-kit app netdelay --queue N --delay-ms D [--reorder-percent P] [--reorder-extra-ms E]   (in a node's namespace)
/// </code>
/// </summary>
internal static class PeerApp
{
    public const string Usage = """
        usage: weft-kit app serve --port P [--bind ADDR] [--mode hash|echo|reset] [--reply-bytes N]
               weft-kit app send --to HOST:PORT --bytes N [--connections C] [--concurrency K] [--hold-ms MS]
                             [--expect-reply-bytes M] [--timeout-ms T] [--rate R] [--quiet 1] [--progress-seconds S]
               weft-kit app rr --to HOST:PORT [--size BYTES] [--count N] [--warmup W]
               weft-kit app rr --to HOST:PORT --rate R [--connections C] [--seconds S] [--size BYTES]
               weft-kit app hold --to HOST:PORT --connections N [--concurrency K] [--exchange-bytes B] [--stdin watch|ignore]
               weft-kit app netdelay --queue N --delay-ms D [--reorder-percent P] [--reorder-extra-ms E]
        """;

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = false };

    /// <summary>Runs until done (send, rr) or until SIGTERM/SIGINT (serve); exit code 0 means every connection was ok.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        using var stop = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            stop.Cancel();
        }

        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        var stdout = Console.Out;
        return await RunAsync(args, line => stdout.WriteLine(line), stop.Token).ConfigureAwait(false);
    }

    /// <summary>The same, writing each JSON line to <paramref name="emit"/> (thread-safe callers only): used by in-process tests.</summary>
    internal static async Task<int> RunAsync(string[] args, Action<string> emit, CancellationToken cancellationToken)
    {
        if (args.Length == 0)
        {
            await Console.Error.WriteLineAsync(Usage).ConfigureAwait(false);
            return 2;
        }

        try
        {
            var options = PeerArguments.Parse(args.AsSpan(1));
            return args[0] switch
            {
                "serve" => await PeerServer.RunAsync(options, emit, cancellationToken).ConfigureAwait(false),
                "send" => await PeerSender.RunAsync(options, emit, cancellationToken).ConfigureAwait(false),
                "rr" => await PeerRoundTrip.RunAsync(options, emit, cancellationToken).ConfigureAwait(false),
                "hold" => await PeerHold.RunAsync(options, emit, cancellationToken).ConfigureAwait(false),
                "netdelay" => await PeerNetDelay.RunAsync(options, emit, cancellationToken).ConfigureAwait(false),
                _ => throw new ArgumentException($"unknown command '{args[0]}'"),
            };
        }
        catch (ArgumentException e)
        {
            await Console.Error.WriteLineAsync($"weft-kit app: {e.Message}\n{Usage}").ConfigureAwait(false);
            return 2;
        }
    }

    internal static string Line(object value) => JsonSerializer.Serialize(value, Json);

    internal static string? Format(EndPoint? endPoint) => endPoint switch
    {
        IPEndPoint ip when ip.Address.IsIPv4MappedToIPv6 => new IPEndPoint(ip.Address.MapToIPv4(), ip.Port).ToString(),
        null => null,
        _ => endPoint.ToString(),
    };
}

/// <summary>"--name value" pairs; every option takes a value.</summary>
internal sealed class PeerArguments
{
    private readonly Dictionary<string, string> _values = [];

    public static PeerArguments Parse(ReadOnlySpan<string> args)
    {
        var parsed = new PeerArguments();
        for (var i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            {
                throw new ArgumentException($"expected '--option value', got '{args[i]}'");
            }

            parsed._values[args[i][2..]] = args[++i];
        }

        return parsed;
    }

    public string? Text(string name) => _values.GetValueOrDefault(name);

    public string RequiredText(string name) => Text(name) ?? throw new ArgumentException($"--{name} is required");

    public long? Number(string name) =>
        Text(name) is not { } text ? null
        : long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value
        : throw new ArgumentException($"--{name} needs a non-negative integer, got '{text}'");

    public long Number(string name, long fallback) => Number(name) ?? fallback;

    public async Task<IPEndPoint> EndPointAsync(string name, CancellationToken cancellationToken)
    {
        var text = RequiredText(name);
        if (IPEndPoint.TryParse(text, out var endPoint) && endPoint.Port != 0)
        {
            return endPoint;
        }

        var colon = text.LastIndexOf(':');
        if (colon <= 0 || !ushort.TryParse(text.AsSpan(colon + 1), CultureInfo.InvariantCulture, out var port) || port == 0)
        {
            throw new ArgumentException($"--{name} needs HOST:PORT, got '{text}'");
        }

        var addresses = await Dns.GetHostAddressesAsync(text[..colon], cancellationToken).ConfigureAwait(false);
        return addresses.Length > 0 ? new IPEndPoint(addresses[0], port) : throw new ArgumentException($"cannot resolve '{text[..colon]}'");
    }
}
