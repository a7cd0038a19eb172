using System.Globalization;
using System.Text.Json;

namespace Weft.Cli;

/// <summary>
/// <c>weft workloads|services|policies|certs</c>: what the local agent knows, with the columns of
/// <c>istioctl ztunnel-config</c>, read from its admin API.
/// </summary>
internal static class ViewsCommand
{
    public const string Usage = """
        weft workloads|services|policies|certs [--namespace NS] [-o table|json] [--admin ADDR | --node NAME [--kubeconfig FILE]]
          What this node's agent holds: pods and their protocol, services and endpoints, authorization
          and peer-authentication policies, certificates (public parts; keys never leave the agent).
          --admin defaults to 127.0.0.1:15000; --node NAME reaches that node's agent through the Kubernetes API.
        """;

    public static readonly IReadOnlyList<string> Views = ["workloads", "services", "policies", "certs"];

    public static async Task<int> RunAsync(string view, IEnumerable<string> args) =>
        await RunAsync(view, args, Console.Out, Console.Error, CancellationToken.None).ConfigureAwait(false);

    public static async Task<int> RunAsync(string view, IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken)
    {
        string output;
        string? ns;
        AdminTarget target;
        try
        {
            var cl = new CommandLine(ViewsTable.NormalizeShortOptions(args));
            target = AdminTarget.From(cl);
            output = cl.Get("output") ?? "table";
            ns = cl.Get("namespace");
            if (output is not ("table" or "json"))
            {
                throw new UsageException($"-o wants table or json, got '{output}'");
            }

            cl.RejectUnknown();
        }
        catch (UsageException e)
        {
            await stderr.WriteLineAsync($"weft {view}: {e.Message}").ConfigureAwait(false);
            await stderr.WriteLineAsync(Usage).ConfigureAwait(false);
            return 2;
        }

        NodeAgentForward? forward = null;
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

    internal static string Json(IReadOnlyList<JsonElement> items) =>
        JsonSerializer.Serialize(items, new JsonSerializerOptions { WriteIndented = true }) + "\n";

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
