from datetime import date

from django.shortcuts import render
from django.views.decorators.http import require_GET

from billing.downloads import usage_download
from portal import selectors
from portal.access import member_required
from portal.forms import UsageFilterForm
from saas_platform import periods


def _filter(request) -> UsageFilterForm:
    first, today = periods.month_start(), periods.last_days(1)[1]
    data = request.GET if "start" in request.GET or "end" in request.GET else None
    initial = {"start": first, "end": today, "model": ""}
    form = UsageFilterForm(data or initial, models=selectors.models_used(request.tenant))
    form.is_valid()
    return form


def _bounds(form: UsageFilterForm) -> tuple[date, date, str]:
    return form.cleaned_data["start"], form.cleaned_data["end"], form.cleaned_data["model"]


@require_GET
@member_required
def usage(request):
    form = _filter(request)
    context = {"form": form}
    status = 200
    if form.is_valid():
        first, last, model_id = _bounds(form)
        rows = list(selectors.usage_table(request.tenant, first, last, model_id))
        context.update(
            chart=selectors.usage_chart(request.tenant, first, last, model_id),
            rows=rows,
            totals={
                "requests": sum(row.requests for row in rows),
                "prompt_tokens": sum(row.prompt_tokens for row in rows),
                "completion_tokens": sum(row.completion_tokens for row in rows),
            },
            query=request.GET.urlencode(),
        )
    else:
        status = 400
    template = "portal/_usage_results.html" if request.htmx else "portal/usage.html"
    return render(request, template, context, status=status)


@require_GET
@member_required
def usage_csv(request):
    form = _filter(request)
    if not form.is_valid():
        return render(request, "portal/usage.html", {"form": form}, status=400)
    first, last, model_id = _bounds(form)
    start, end = periods.day_range(first, last)
    return usage_download(request, request.tenant, start, end, model_id)
