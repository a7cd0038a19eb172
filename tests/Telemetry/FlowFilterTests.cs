using System.Net;
using Weft.Telemetry;

namespace Weft.Tests.Telemetry;

/// <summary>Each filter of <c>weft flows</c> returns exactly the flows that match it.</summary>
public class FlowFilterTests
{
    private static readonly DateTimeOffset T0 = new(2025, 3, 1, 12, 0, 0, TimeSpan.Zero);

    /// <summary>Five flows: id tag, source, destination, flags, start offset (s), end offset (s) or null when live.</summary>
    private static readonly (string Tag, string? From, string? To, string Flags, int Start, int? End)[] Flows =
    [
        ("a-b-ok", "demo/a1", "demo/b1", "-", 0, 10),
        ("a-b-deny", "demo/a1", "demo/b1", "DENY", 20, 20),
        ("c-a-live", "other/c1", "demo/a1", "-", 30, null),
        ("b-c-tls", "demo/b1", "other/c1", "TLS_FAILURE", 40, 41),
        ("x-b-uf", null, "demo/b1", "UF", 50, 51),
    ];

    private static List<(string Tag, Flow Flow)> Make() => Flows.Select(f =>
    {
        var flow = new Flow(FlowDirection.Outbound, new IPEndPoint(IPAddress.Loopback, 1), new IPEndPoint(IPAddress.Loopback, 2), T0.AddSeconds(f.Start))
        {
            SourceWorkload = f.From,
            DestinationWorkload = f.To,
            ResponseFlags = f.Flags,
        };
        if (f.End is { } end)
        {
            flow.FinishAt(T0.AddSeconds(end));
        }

        return (f.Tag, flow);
    }).ToList();

    public static TheoryData<string, FlowFilter, string[]> Cases => new()
    {
        { "no filter", FlowFilter.None, ["a-b-ok", "a-b-deny", "c-a-live", "b-c-tls", "x-b-uf"] },
        { "--pod demo/a1", new FlowFilter { Pod = "demo/a1" }, ["a-b-ok", "a-b-deny", "c-a-live"] },
        { "--from-pod demo/a1", new FlowFilter { FromPod = "demo/a1" }, ["a-b-ok", "a-b-deny"] },
        { "--to-pod demo/b1", new FlowFilter { ToPod = "demo/b1" }, ["a-b-ok", "a-b-deny", "x-b-uf"] },
        { "--from-pod demo/a1 --to-pod demo/b1", new FlowFilter { FromPod = "demo/a1", ToPod = "demo/b1" }, ["a-b-ok", "a-b-deny"] },
        { "--namespace other", new FlowFilter { Namespace = "other" }, ["c-a-live", "b-c-tls"] },
        { "--verdict forwarded", new FlowFilter { Verdict = "forwarded" }, ["a-b-ok", "c-a-live"] },
        { "--verdict denied", new FlowFilter { Verdict = "denied" }, ["a-b-deny"] },
        { "--verdict error", new FlowFilter { Verdict = "error" }, ["b-c-tls", "x-b-uf"] },
        { "--verdict TLS_FAILURE", new FlowFilter { Verdict = "TLS_FAILURE" }, ["b-c-tls"] },
        { "--verdict uf", new FlowFilter { Verdict = "uf" }, ["x-b-uf"] },
        { "--since T0+15s (live c-a started later anyway)", new FlowFilter { Since = T0.AddSeconds(15) }, ["a-b-deny", "c-a-live", "b-c-tls", "x-b-uf"] },
        { "--since T0+45s keeps the still-open flow", new FlowFilter { Since = T0.AddSeconds(45) }, ["c-a-live", "x-b-uf"] },
        { "--last 2", new FlowFilter { Last = 2 }, ["b-c-tls", "x-b-uf"] },
        { "--pod demo/b1 --last 1", new FlowFilter { Pod = "demo/b1", Last = 1 }, ["x-b-uf"] },
        { "--namespace demo --verdict denied", new FlowFilter { Namespace = "demo", Verdict = "denied" }, ["a-b-deny"] },
        { "--pod nobody/x", new FlowFilter { Pod = "nobody/x" }, [] },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Filter_ReturnsExactlyTheMatchingFlows(string name, FlowFilter filter, string[] expected)
    {
        var flows = Make();
        var byFlow = flows.ToDictionary(f => f.Flow, f => f.Tag);
        var matched = filter.Apply(flows.Select(f => f.Flow), f => f).Select(f => byFlow[f]).ToArray();
        Assert.True(expected.SequenceEqual(matched), $"{name}: expected [{string.Join(", ", expected)}], got [{string.Join(", ", matched)}]");
    }

    [Fact]
    public void Filter_SurvivesTheAdminQueryString()
    {
        var filter = new FlowFilter { Pod = "demo/a 1", FromPod = "demo/a1", ToPod = "demo/b1", Namespace = "demo", Verdict = "denied", Since = T0, Last = 3 };
        var query = System.Web.HttpUtility.ParseQueryString(filter.ToQuery());
        Assert.Equal(filter, FlowFilter.FromQuery(query));
    }

    [Theory]
    [InlineData("30s", 30)]
    [InlineData("5m", 300)]
    [InlineData("2h", 7200)]
    [InlineData("1.5d", 129600)]
    public void Since_AcceptsDurations(string text, int seconds) =>
        Assert.Equal(T0.AddSeconds(-seconds), FlowFilter.ParseSince(text, T0));

    [Fact]
    public void Since_AcceptsRfc3339_AndRejectsNonsenseWithAClearMessage()
    {
        Assert.Equal(T0, FlowFilter.ParseSince("2025-03-01T12:00:00Z", DateTimeOffset.UtcNow));
        var e = Assert.Throws<FormatException>(() => FlowFilter.ParseSince("yesterday", T0));
        Assert.Contains("--since wants", e.Message);
    }
}
