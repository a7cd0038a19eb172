using System.Buffers;
using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Weft.Cli;

/// <summary>
/// <c>weft workloads|services|policies|certs</c>: what the local agent knows, with the columns of
/// <c>istioctl ztunnel-config</c>, read from its admin API.
/// </summary>
internal static class ViewsCommand
{
    public static readonly IReadOnlyList<string> Views = ["workloads", "services", "policies", "certs"];

    private static readonly Dictionary<string, string> Descriptions = new(StringComparer.Ordinal)
    {
        ["workloads"] = "Pods this node's agent knows, with address, node, service account and protocol.",
        ["services"] = "Services this node's agent knows, with VIPs, ports and ready endpoints.",
        ["policies"] = "Authorization and peer-authentication policies this node's agent enforces.",
        ["certs"] = "Certificates this node's agent holds, public parts only (keys never leave the agent), with validity.",
    };

    public static Command Create(string view)
    {
        var command = new Command(view, Descriptions[view]) { CliOptions.Namespace, CliOptions.Output };
        AdminTarget.AddOptions(command);
        command.SetAction((result, cancellationToken) => RunAsync(view, result, cancellationToken));
        WeftCli.Examples(command, $"weft {view}", $"weft {view} --namespace demo -o json", $"weft {view} --node worker-2");
        return command;
    }

    /// <summary>Runs <c>weft VIEW ARGS</c> with its output in the given writers (tests call this).</summary>
    public static Task<int> RunAsync(string view, IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken) =>
        WeftCli.RunAsync([view, .. args], stdout, stderr, cancellationToken);

    private static async Task<int> RunAsync(string view, ParseResult cl, CancellationToken cancellationToken)
    {
        var stdout = cl.InvocationConfiguration.Output;
        var stderr = cl.InvocationConfiguration.Error;
        var target = AdminTarget.From(cl);
        var output = cl.GetRequiredValue(CliOptions.Output);
        var ns = cl.GetValue(CliOptions.Namespace);

        PodPortForward? forward = null;
        try
        {
            forward = await target.ForwardAsync(cancellationToken).ConfigureAwait(false);
            using var client = target.Client(forward);
            using var doc = await client.GetAsync(view, cancellationToken).ConfigureAwait(false);
            var section = view == "certs" ? "certificates" : view;
            var items = doc.RootElement.GetProperty(section).EnumerateArray()
                .Where(e => ns is null || !e.TryGetProperty("namespace", out var n) || n.GetString() == ns)
                .ToList();
            await stdout.WriteAsync(output == "json" ? Json(items) : Table(view, items)).ConfigureAwait(false);
            return 0;
        }
        catch (AdminUnreachableException e)
        {
            await stderr.WriteLineAsync($"weft: {AdminTarget.Explain(e, forward)}").ConfigureAwait(false);
            return 1;
        }
        finally
        {
            if (forward is not null)
            {
                await forward.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    internal static string Json(IReadOnlyList<JsonElement> items)
    {
        // Written element by element: JsonSerializer would need reflection metadata, which a trimmed (NativeAOT) build lacks.
        var buffer = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartArray();
            foreach (var item in items)
            {
                item.WriteTo(writer);
            }

            writer.WriteEndArray();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan) + "\n";
    }

    internal static string Table(string view, IReadOnlyList<JsonElement> items)
    {
        static string S(JsonElement e, string name) =>
            e.TryGetProperty(name, out var v) ? v.ValueKind switch
            {
                JsonValueKind.String => v.GetString() is { Length: > 0 } s ? s : "-",
                JsonValueKind.Number => v.GetRawText(),
                JsonValueKind.True => "true",
                JsonValueKind.False => "false",
                _ => "-",
            } : "-";

        static string Time(JsonElement e, string name) =>
            e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
                ? v.GetDateTimeOffset().UtcDateTime.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture)
                : "-";

        return view switch
        {
            "workloads" => ViewsTable.Render(["NAMESPACE", "POD NAME", "ADDRESS", "NODE", "SERVICE ACCOUNT", "PROTOCOL"],
                items.Select(e => (IReadOnlyList<string>)[S(e, "namespace"), S(e, "pod"), S(e, "ips"), S(e, "node"), S(e, "service_account"), S(e, "protocol")])),
            "services" => ViewsTable.Render(["NAMESPACE", "SERVICE NAME", "SERVICE VIP", "PORTS", "ENDPOINTS"],
                items.Select(e => (IReadOnlyList<string>)[S(e, "namespace"), S(e, "service"), S(e, "vips"), S(e, "ports"), $"{S(e, "ready_endpoints")}/{S(e, "endpoints")}"])),
            "policies" => ViewsTable.Render(["NAMESPACE", "POLICY NAME", "KIND", "ACTION", "SCOPE"],
                items.Select(e => (IReadOnlyList<string>)[S(e, "namespace"), S(e, "name"), S(e, "kind"), S(e, "action"), S(e, "scope")])),
            "certs" => ViewsTable.Render(["CERTIFICATE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"],
                items.Select(e => (IReadOnlyList<string>)[S(e, "name"), S(e, "type"), S(e, "status"), S(e, "valid"), S(e, "serial_number"), Time(e, "not_after"), Time(e, "not_before")])),
            _ => throw new ArgumentOutOfRangeException(nameof(view)),
        };
    }
}
